"""Alembic environment: runs on the connection the store hands over (no alembic.ini)."""

from alembic import context

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - only Store.open runs these migrations
    raise RuntimeError("the pool store's migrations run through comfyfleet, not the alembic CLI")

context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
