"""Alembic's environment. The service (apps/api/db/migrate.py) hands it an open connection, inside
the transaction and lock it holds; ``alembic`` on the command line connects to ``DATABASE_URL``."""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from apps.api.db.tables import metadata

config = context.config


def run_on(connection: Connection) -> None:
    # SQLite runs DDL inside transactions too; one transaction makes the whole upgrade atomic
    context.configure(
        connection=connection,
        target_metadata=metadata,
        transactional_ddl=True,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER most things
    )
    with context.begin_transaction():
        context.run_migrations()


def run_offline() -> None:
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=metadata, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    run_offline()
elif (connection := config.attributes.get("connection")) is not None:
    run_on(connection)  # the service, or `python -m apps.api.db`
else:  # the alembic command line: DATABASE_URL, under the same lock as the service's upgrade
    from apps.api.db.migrate import locked, on_url

    asyncio.run(on_url(None, lambda engine: locked(engine, run_on)))
