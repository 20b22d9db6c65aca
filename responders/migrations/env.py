"""Alembic environment: run by ``responders.store.migrate`` with an open connection."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from responders.store import Base

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is None:  # the alembic CLI, with sqlalchemy.url in its ini
        engine = create_engine(config.get_main_option("sqlalchemy.url") or "")
        with engine.begin() as c:
            context.configure(connection=c, target_metadata=target_metadata,
                              render_as_batch=True)
            context.run_migrations()
        return
    context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
    context.run_migrations()


run()
