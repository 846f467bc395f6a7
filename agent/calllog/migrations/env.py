"""Alembic's environment for the call log. Run through ``voxroute.agent.calllog.database.migrate``, which hands over
an open connection (the database URL comes from the environment, not from an alembic.ini)."""

from __future__ import annotations

from alembic import context

from voxroute.agent.calllog.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "the call log's migrations run through agent.calllog.database.migrate(), which gives them a connection"
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
