"""Alembic migrations of the pool store (run by :meth:`comfyfleet.fleet.store.Store.open`)."""
