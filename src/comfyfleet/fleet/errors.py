"""The fleet's errors: what a provider (Vast.ai, SSH hosts) answered, classified once.

Each is a :class:`comfyfleet.errors.ComfyfleetError` with the hint a person needs. Providers map
HTTP statuses, provider error codes and transport failures into these at their boundary, so
the reconciler and the CLI react to a class, never to a status code. ``retryable`` says whether
the same call may succeed on a later tick; ``exit_code`` is what ``pool serve`` exits with when
the error stops it at start-up (at run time a retryable error is retried on the next tick).
Messages never carry the API key (providers redact it before raising).
"""

from __future__ import annotations

from comfyfleet.errors import ComfyfleetError


class ProviderError(ComfyfleetError):
    """A provider call failed; subclasses say how."""

    #: whether the same call may succeed later (the reconciler retries it on the next tick)
    retryable: bool = False


class ProviderAuthError(ProviderError):
    """The provider refused our credentials (401/403), or none were given (VAST_API_KEY unset)."""

    exit_code = 2


class ProviderUnreachable(ProviderError):
    """The provider's API could not be reached (DNS, connection refused, TLS, timeout)."""

    exit_code = 2
    retryable = True


class ProviderUnavailable(ProviderError):
    """The provider kept answering 5xx (or dropped the answer) after bounded retries."""

    retryable = True


class ProviderRateLimited(ProviderError):
    """The provider kept answering 429 (too frequent) after bounded retries."""

    retryable = True


class OfferUnavailable(ProviderError):
    """The offer was taken or withdrawn between search and create (404/410 ``no_such_ask``):
    nothing was created; try the next offer."""


class CreateFailed(ProviderError):
    """Create answered an error. ``provider_id`` is set when the answer still names the
    instance it made (Vast's ``new_contract``): that instance exists and bills — track and
    destroy it."""

    def __init__(self, message: str, *, hint: str = "", provider_id: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.provider_id = provider_id
