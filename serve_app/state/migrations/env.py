"""Alembic's environment for the state store: run by serve_app/state/store.py ``migrate`` on the connection it
hands over (never from an alembic.ini: the store's URL is the app's, state/store.py ``state_url``)."""

from alembic import context

connection = context.config.attributes["connection"]
# Batch mode: SQLite alters a table by copying it, which later migrations need for column changes.
context.configure(connection=connection, target_metadata=None, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
