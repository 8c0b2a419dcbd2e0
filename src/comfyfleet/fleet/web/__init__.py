"""The pool dashboard at ``/``: server-rendered HTML, live fragments over SSE, our own script.

Mounted into the lease API's FastAPI app by :func:`install`. The page needs the operator
token once (the login form); it then lives in an HttpOnly cookie, and the page's buttons call
the lease API with that cookie plus the CSRF header (see :mod:`.auth`).
"""

from __future__ import annotations

from comfyfleet.fleet.web.routes import Dashboard, install, mount

__all__ = ["Dashboard", "install", "mount"]
