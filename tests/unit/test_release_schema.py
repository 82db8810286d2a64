"""A release stored by an earlier serve_app still deploys: a history database written before configs carried a
schema version opens, its releases read back as version 1, migrate to the current shape, validate, and a
rollback to one applies it; a config stored by a newer serve_app (a version this code does not know) is
refused with an error that says so, and nothing is applied.

Serve is the fake gateway of tests/fakes/serve_gateway.py, time an injected clock.
"""

import asyncio
import copy
import json
import sqlite3
import time

import pytest

from serve_app.config.loader import ConfigError, validate_serve_config
from serve_app.config.versions import CURRENT_VERSION, MIGRATIONS, UnknownSchemaVersion, migrate
from serve_app.errors import InvalidRequest
from serve_app.release.controller import Releases
from serve_app.release.history import History
from tests.fakes.clock import FakeClock
from tests.fakes.serve_gateway import FakeServeGateway

pytestmark = pytest.mark.unit

# The release history's tables as serve_app created them before the schema version (release/history.py).
OLD_SCHEMA = """
CREATE TABLE IF NOT EXISTS releases (
    n INTEGER PRIMARY KEY,
    created_at REAL NOT NULL,
    finished_at REAL,
    actor TEXT NOT NULL,
    kind TEXT NOT NULL,            -- deploy | rollback | scale | initial
    note TEXT,
    config TEXT NOT NULL,          -- the whole Serve config (JSON)
    changed TEXT NOT NULL,         -- what differs from the release it replaced (JSON list)
    status TEXT NOT NULL,          -- deploying | good | failed | superseded-while-deploying
    outcome TEXT,
    rolled_back_to INTEGER
);
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    allowed INTEGER NOT NULL,
    detail TEXT
);
"""

APP = {"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
       "args": {"vector": {"enabled": False}},
       "deployments": [{"name": "LLMServer", "num_replicas": 1}, {"name": "Ingress"}]}


def _config(**engine):
    config = {"applications": [copy.deepcopy(APP)]}
    config["applications"][0]["args"]["engine"] = engine
    return config


OLD_RELEASES = [_config(max_num_seqs=8), _config(max_num_seqs=16)]


def _old_history(state_dir):
    """A history database as the serve_app before schema versions left it: releases 1 and 2, both good."""
    db = sqlite3.connect(state_dir / "releases.sqlite", isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.executescript(OLD_SCHEMA)
    for i, config in enumerate(OLD_RELEASES):
        # As History.add wrote a row, then History.finish its outcome.
        db.execute("INSERT INTO releases (created_at, actor, kind, note, config, changed, status) VALUES (?,?,?,?,?,?,?)",
                   (time.time(), "admin@127.0.0.1", "deploy" if i else "initial", None,
                    json.dumps(config, sort_keys=True), json.dumps(["everything"]), "deploying"))
        db.execute("UPDATE releases SET status=?, outcome=?, finished_at=?, rolled_back_to=? WHERE n=?",
                   ("good", "healthy after 1.0s", time.time(), None, i + 1))
    db.close()


def _controller(state_dir):
    clock = FakeClock()
    gateway = FakeServeGateway({"serve_app": OLD_RELEASES[1]["applications"][0]}, clock)
    return Releases("serve_app", History(state_dir), gateway, clock, clock.sleep), gateway


def _renamed(config):
    """``config`` as version 3 names it: the first model's deployment by its served name."""
    out = copy.deepcopy(config)
    for d in out["applications"][0]["deployments"]:
        d["name"] = "LLMServer-SmolLM2-135M-Instruct" if d["name"] == "LLMServer" else d["name"]
    return out


def test_every_version_before_the_current_one_has_its_migration_step():
    assert set(MIGRATIONS) == set(range(1, CURRENT_VERSION))
    assert migrate(OLD_RELEASES[0], CURRENT_VERSION) == OLD_RELEASES[0]
    # Version 3 names the first model's deployment by its model, as every other's; the file form is refused
    # with the new name (a release stored before is migrated, a file is the user's to rename).
    assert migrate(OLD_RELEASES[0], 2) == _renamed(OLD_RELEASES[0])
    with pytest.raises(ConfigError, match="the first model's is 'LLMServer-SmolLM2-135M-Instruct', not 'LLMServer'"):
        validate_serve_config(OLD_RELEASES[0], "release")


def test_a_history_from_before_schema_versions_opens_and_its_releases_are_version_1(tmp_path):
    _old_history(tmp_path)
    history = History(tmp_path)
    History(tmp_path)  # opening it again changes nothing
    old = history.get(1)
    assert old["schema_version"] == 1 and old["config"] == OLD_RELEASES[0] and old["status"] == "good"
    config = migrate(old["config"], old["schema_version"])
    schema, settings = validate_serve_config(config, "release")
    assert settings["serve_app"].engine.max_num_seqs == 8
    # What this code writes is the current version.
    n = history.add(actor="t", kind="deploy", note=None, config=config, changed=[], status="good")
    assert history.get(n)["schema_version"] == CURRENT_VERSION
    assert [r["schema_version"] for r in history.list()] == [CURRENT_VERSION, 1, 1]


def test_a_rollback_to_a_release_stored_before_schema_versions_applies_it(tmp_path):
    _old_history(tmp_path)

    async def run():
        c, gw = _controller(tmp_path)
        out = await c.rollback("admin")  # to release 1, the good one before the last
        await c.background
        return c, gw, out

    c, gw, out = asyncio.run(run())
    assert out["release"] == 3 and out["changed"] == ["args.engine"]
    rel = c.history.get(3)
    assert rel["kind"] == "rollback" and rel["status"] == "good" and rel["schema_version"] == CURRENT_VERSION
    applied = gw.applied[-1]["applications"][0]
    assert applied["args"] == OLD_RELEASES[0]["applications"][0]["args"]
    assert {d["name"] for d in applied["deployments"]} == {"LLMServer-SmolLM2-135M-Instruct", "Ingress"}
    assert next(d for d in applied["deployments"] if d["name"] == "Ingress")["user_config"] == {"release": "3"}


def test_a_config_of_a_newer_schema_version_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(UnknownSchemaVersion, match=rf"version {CURRENT_VERSION + 1} is newer than this serve_app's"):
        migrate(OLD_RELEASES[0], CURRENT_VERSION + 1)
    with pytest.raises(UnknownSchemaVersion, match="not a version"):
        migrate(OLD_RELEASES[0], 0)

    _old_history(tmp_path)
    History(tmp_path)  # copies the older history into the store, with the column
    with sqlite3.connect(tmp_path / "state.sqlite") as db:  # release 1 as a newer serve_app would store it
        db.execute("UPDATE releases SET schema_version=? WHERE n=1", (CURRENT_VERSION + 1,))
    c, gw = _controller(tmp_path)
    with pytest.raises(InvalidRequest, match=rf"release 1 cannot be deployed: config schema version "
                                             rf"{CURRENT_VERSION + 1} is newer") as caught:
        asyncio.run(c.rollback("admin", to=1))
    assert caught.value.param == "release"
    assert gw.applied == [] and len(c.history.list()) == 2
