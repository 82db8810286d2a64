"""Where the app keeps what every replica and node must see: one SQL database behind SQLAlchemy 2 Core, its
schema kept by Alembic (serve_app/state/migrations).

    SERVE_APP_STATE_URL        a SQLAlchemy URL: postgresql://user:pass@host/db (clusters), sqlite:///path
    SERVE_APP_STATE_URL_FILE   a file holding it (a mounted secret: the URL carries the database's password)
    neither                    sqlite:///<state directory>/state.sqlite (config/paths.py): one machine

The URL is not a config field on purpose: configs are what the store keeps (release history), and a release
cannot move the history it is recorded in. A `postgresql://` URL uses psycopg 3.

Migrations run from one process at a time: ``serve-app run`` before it starts Ray, the release controller's
actor when it starts (one detached actor per cluster), and ``serve-app migrate`` (e.g. a deploy pipeline's
step before ``serve deploy``). Replicas only check that
the schema is at head (``at_head``) and wait for it otherwise, so they never race a migration.
An existing SQLite history of an older serve_app (``releases.sqlite`` in the state directory) is copied in on
the first start of a store that holds no release and no audit record yet (``import_legacy``).
"""

from __future__ import annotations

import functools
import logging
import os
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Engine, create_engine, event, func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, SQLAlchemyError

from serve_app.config import paths
from serve_app.errors import ServiceUnavailable
from serve_app.state import tables

logger = logging.getLogger(__name__)
DEFAULT_FILE = "state.sqlite"
LEGACY_FILE = "releases.sqlite"
_MIGRATIONS = Path(__file__).parent / "migrations"


class StoreUnavailable(Exception):
    """The store cannot be reached (or its schema is not there yet): the message names the URL, never its
    password."""


def state_url() -> str:
    url = os.environ.get("SERVE_APP_STATE_URL", "").strip()
    path = os.environ.get("SERVE_APP_STATE_URL_FILE")
    if not url and path:
        try:
            url = Path(path).read_text().strip()
        except OSError as exc:
            raise StoreUnavailable(f"cannot read SERVE_APP_STATE_URL_FILE {path}: {exc.strerror}") from None
    return url or f"sqlite:///{paths.state_dir() / DEFAULT_FILE}"


def shown(url: str) -> str:
    """The URL as it may be printed: its password hidden."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "<unparsable URL>"


P = ParamSpec("P")
R = TypeVar("R")


def answering(fn: Callable[P, R]) -> Callable[P, R]:
    """For the methods of an object holding the store's ``engine``: the store not answering becomes
    ServiceUnavailable (503, naming the store, never its password), so a caller gets a clear refusal instead of
    a database error. An IntegrityError is no outage: it stays the caller's to read (a name taken, a row that
    exists)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except IntegrityError:
            raise
        except SQLAlchemyError as exc:
            holder: Any = args[0]
            raise ServiceUnavailable(f"the state store {shown(str(holder.engine.url))} does not answer "
                                     f"({type(exc).__name__})") from None

    return wrapper


def make_engine(url: str) -> Engine:
    """An engine for ``url``; nothing is connected yet. Raises StoreUnavailable for a URL that is not one."""
    try:
        u = make_url(url)
    except ArgumentError:
        raise StoreUnavailable(f"SERVE_APP_STATE_URL is not a database URL: {shown(url)}") from None
    if u.get_backend_name() == "sqlite":
        if u.database and u.database != ":memory:":
            Path(u.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        # Several processes of one machine share the file (the controller and every ingress replica): WAL lets
        # readers go on during a write; a writer waits for another up to the timeout instead of failing.
        engine = create_engine(u, connect_args={"check_same_thread": False, "timeout": 10})

        @event.listens_for(engine, "connect")
        def _pragmas(conn, _record) -> None:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
        return engine
    if u.drivername == "postgresql":
        u = u.set(drivername="postgresql+psycopg")
    # pre_ping: a connection the server dropped (restart, failover) is replaced instead of failing one call.
    # TCP keepalives: a connection the network silently dropped fails within ~25 s instead of hanging a query
    # (the key book's poll holds its lock while it reads).
    return create_engine(u, pool_pre_ping=True, pool_size=4, max_overflow=4, pool_timeout=5,
                         connect_args={"connect_timeout": 5, "keepalives": 1, "keepalives_idle": 10,
                                       "keepalives_interval": 5, "keepalives_count": 3})


def _alembic(connection) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head() -> str | None:
    return ScriptDirectory.from_config(_alembic(None)).get_current_head()


def revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def at_head(engine: Engine) -> bool:
    return revision(engine) == head()


def migrate(engine: Engine, state_dir: Path | None = None) -> None:
    """Bring the schema to head, then copy an older SQLite history in if the store has none. Raises
    StoreUnavailable naming the URL when the database cannot be reached."""
    try:
        with engine.begin() as conn:
            command.upgrade(_alembic(conn), "head")
        import_legacy(engine, state_dir or paths.state_dir())
    except (SQLAlchemyError, CommandError, sqlite3.Error, OSError) as exc:
        # CommandError: a schema revision this code does not know (a newer serve_app migrated the store).
        raise StoreUnavailable(f"the state store {shown(str(engine.url))} cannot be used: "
                               f"{str(getattr(exc, 'orig', None) or exc).strip()[:300]}") from None


def open_store(url: str | None = None, *, migrate_schema: bool = True) -> Engine:
    engine = make_engine(url or state_url())
    if migrate_schema:
        migrate(engine)
    return engine


_LEGACY_COLUMNS = [c.name for c in tables.releases.columns]


def import_legacy(engine: Engine, state_dir: Path) -> int:
    """Copy the releases and audit rows of ``state_dir``/releases.sqlite (the history of a serve_app from
    before the store) into a store with neither; returns how many releases. Release numbers are kept; columns the
    old file lacks get their defaults (schema_version 1, scope "app"), which is what its rows are."""
    legacy = Path(state_dir) / LEGACY_FILE
    if not legacy.exists():
        return 0
    with engine.connect() as conn:
        if any(conn.execute(select(func.count()).select_from(t)).scalar_one() for t in (tables.releases, tables.audit)):
            return 0  # the store has a history of its own (or this file was copied in already)
    src = None
    try:
        src = sqlite3.connect(f"file:{legacy}?mode=ro", uri=True)
        have = [row[1] for row in src.execute("PRAGMA table_info(releases)")]
        cols = [c for c in _LEGACY_COLUMNS if c in have]
        rows = [dict(zip(cols, r, strict=True)) for r in src.execute(f"SELECT {', '.join(cols)} FROM releases ORDER BY n")]
        audit_rows = [dict(zip(("at", "actor", "action", "allowed", "detail"), r, strict=True))
                      for r in src.execute("SELECT at, actor, action, allowed, detail FROM audit ORDER BY id")]
    except sqlite3.Error as exc:
        logger.warning("not importing the older history %s: %s", legacy, exc)
        return 0
    finally:
        if src is not None:
            src.close()
    try:
        with engine.begin() as conn:
            if rows:
                conn.execute(insert(tables.releases), rows)
            if audit_rows:
                conn.execute(insert(tables.audit), audit_rows)
    except IntegrityError:  # another process migrating at the same time copied it first
        return 0
    logger.info("imported %d releases and %d audit records from %s", len(rows), len(audit_rows), legacy)
    return len(rows)
