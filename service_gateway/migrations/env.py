"""Alembic environment: always handed a live connection by service_gateway.migrations."""
from alembic import context

from service_gateway.store import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `sg db upgrade`, which supplies the connection")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
