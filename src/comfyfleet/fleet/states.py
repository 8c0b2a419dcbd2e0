"""An instance's life in the store: its states and the transitions between them.

The table is issue 11's. One addition, by the meaning of ``lost`` ("the provider no longer
knows it"): any state in which a provider instance may exist can become ``lost`` when it
vanishes from the provider's listing — except ``destroying``, where vanishing is the
confirmation we wait for (``destroyed``).
"""

from __future__ import annotations

from enum import StrEnum


class State(StrEnum):
    """Where an instance is in its life (the ``state`` column)."""

    REQUESTED = "requested"  # intent row written, no provider call made yet
    CREATING = "creating"  # create call sent, or its outcome unknown (resolved by label)
    BOOTING = "booting"  # the provider has it; waiting for running + SSH (ssh: claimed)
    PROVISIONING = "provisioning"  # reachable; `comfyfleet provision` runs on it
    READY = "ready"  # provisioned and healthy, not leased
    LEASED = "leased"  # handed to a user
    RELEASING = "releasing"  # lease ended; wiping and reprovisioning, or about to destroy
    DESTROYING = "destroying"  # destroy requested, not yet confirmed gone
    DESTROYED = "destroyed"  # the provider confirmed it is gone (final)
    FAILED = "failed"  # something failed; the reason is recorded
    LOST = "lost"  # the provider no longer knows it (final; replaced)


S = State
TRANSITIONS: dict[State, frozenset[State]] = {
    S.REQUESTED: frozenset({S.CREATING}),
    S.CREATING: frozenset({S.BOOTING, S.FAILED, S.LOST}),
    S.BOOTING: frozenset({S.PROVISIONING, S.FAILED, S.LOST}),
    S.PROVISIONING: frozenset({S.READY, S.FAILED, S.LOST}),
    S.READY: frozenset({S.LEASED, S.DESTROYING, S.LOST}),
    S.LEASED: frozenset({S.RELEASING, S.LOST}),
    S.RELEASING: frozenset({S.PROVISIONING, S.DESTROYING, S.LOST}),
    S.DESTROYING: frozenset({S.DESTROYED}),
    S.DESTROYED: frozenset(),
    S.FAILED: frozenset({S.DESTROYING}),
    S.LOST: frozenset(),
}

FINAL = frozenset({S.DESTROYED, S.LOST})
#: every state that is, or may become, a billed provider instance: what the caps count
LIVE = frozenset(State) - FINAL
#: states whose instance is on its way to ready (what min_ready counts besides ready itself)
PENDING = frozenset({S.REQUESTED, S.CREATING, S.BOOTING, S.PROVISIONING})
#: states with a provision deadline (provision_timeout from the create)
DEADLINED = frozenset({S.CREATING, S.BOOTING, S.PROVISIONING})


class IllegalTransition(ValueError):
    """A state change the table does not allow (a bug in the caller, never user input)."""


def check_transition(old: State, new: State) -> None:
    """Raise :class:`IllegalTransition` unless ``old → new`` is in the table."""
    if new not in TRANSITIONS[old]:
        raise IllegalTransition(f"{old.value} → {new.value} is not a legal transition")
