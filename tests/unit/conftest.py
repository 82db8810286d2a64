"""Fixtures of the unit tests."""

import secrets

import pytest
from sqlalchemy import create_engine, text

from serve_app.state import store


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request, tmp_path, monkeypatch):
    monkeypatch.setenv("SERVE_APP_STATE_DIR", str(tmp_path / "state"))  # no older history of the user's read
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.sqlite'}"
    else:
        pg = request.getfixturevalue("postgres")
        name = f"t_{secrets.token_hex(6)}"
        admin = create_engine(pg.url.replace("postgresql://", "postgresql+psycopg://"), isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE DATABASE {name}"))
        admin.dispose()
        url = pg.url.rsplit("/", 1)[0] + f"/{name}"
    e = store.open_store(url)
    try:
        yield e
    finally:
        e.dispose()
