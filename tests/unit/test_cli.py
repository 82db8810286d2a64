"""The command line and the admin client: `serve-app --version` prints the installed version; every subcommand
answers --help and shows its options' defaults; `serve-app ingest` is the ingest job with the job's own
options and function; the admin client sends the admin key as a Bearer header, turns a refused call into
AdminError (status and message), and follow() polls a release every 0.5 s until it is no longer deploying,
within its bound; the admin subcommands exit 0 on a good release and 1 on a refusal; `import serve_app`
imports neither Ray nor vLLM. No server: the admin API is an httpx.MockTransport."""

import argparse
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import serve_app
from serve_app.admin_client import AdminClient, AdminError
from serve_app.cli import admin as cli_admin
from serve_app.cli import build_parser, main
from serve_app.jobs import ingest as ingest_job
from tests.names import DEPLOYMENT

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


SUBCOMMANDS = sorted(_subparsers(build_parser()))


def test_version_is_the_installed_distributions(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"serve-app {serve_app.__version__}"
    from importlib.metadata import PackageNotFoundError, version

    try:
        assert serve_app.__version__ == version("serve_app")
    except PackageNotFoundError:  # a source tree that was never installed
        assert serve_app.__version__ == "0+unknown"


def test_python_dash_m_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "serve_app.cli", "--version"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"serve-app {serve_app.__version__}"


def test_every_subcommand_exists():
    assert set(SUBCOMMANDS) >= {"run", "prepare-model", "check-config", "kuberay", "hash-key", "keys", "deploy",
                                "status", "history", "rollback", "scale", "ingest", "bench"}


def test_run_with_a_state_store_it_cannot_reach_stops_with_its_url_and_no_traceback():
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://serve:secret-pw@127.0.0.1:{port}/state"
    out = subprocess.run([sys.executable, "-m", "serve_app.cli", "run", "--config", "configs/dev-cpu.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=60, env={**os.environ, "SERVE_APP_STATE_URL": url})
    assert out.returncode == 2, out.stderr
    assert f"127.0.0.1:{port}/state" in out.stderr and "secret-pw" not in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("cmd", [c for c in SUBCOMMANDS if c != "bench"])
def test_help_of_every_subcommand_shows_the_defaults(cmd, capsys, monkeypatch):
    monkeypatch.delenv("SERVE_APP_URL", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main([cmd, "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # unwrapped
    assert text.startswith(f"usage: serve-app {cmd}")
    for action in _subparsers(build_parser())[cmd]._actions:
        if action.default in (None, False, argparse.SUPPRESS) or "default" in (action.help or ""):
            continue  # none to show, or the help text says it in words
        if action.option_strings or action.nargs in ("?", "*"):
            assert f"(default: {action.default})" in text, (cmd, action.dest)


def test_defaults_are_shown_where_an_operator_looks_for_them(capsys, monkeypatch):
    monkeypatch.delenv("SERVE_APP_URL", raising=False)
    for argv, shown in ([["run", "--help"], "(default: configs/dev-cpu.yaml)"],
                        [["status", "--help"], "(default: http://127.0.0.1:8000)"],
                        [["ingest", "--help"], "(default: 32)"]):
        with pytest.raises(SystemExit):
            main(argv)
        assert shown in " ".join(capsys.readouterr().out.split())


def test_bench_help_is_the_suites(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    with pytest.raises(SystemExit) as exit_:
        main(["bench", "--help"])
    assert exit_.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: serve-app bench") and "(default: configs/dev-cpu.yaml)" in text


def test_ingest_is_the_job_with_its_options():
    job = argparse.ArgumentParser()
    ingest_job.add_arguments(job)
    cli = _subparsers(build_parser())["ingest"]
    assert {s for a in job._actions for s in a.option_strings} <= {s for a in cli._actions for s in a.option_strings}
    assert [a.dest for a in job._actions if not a.option_strings] == ["path"]
    ns = build_parser().parse_args(["ingest", "docs", "--batch-size", "8"])
    assert ns.func is ingest_job.run and ns.path == Path("docs") and ns.batch_size == 8 and ns.attempts == 4


# ------------------------------------------------------------------------------------------- admin client


class FakeAdmin:
    """The admin API as a MockTransport: release ``n`` answers ``statuses`` one after the other (the last
    one for ever); every request is recorded."""

    def __init__(self, statuses=("good",), refuse: tuple[int, str] | None = None):
        self.statuses, self.refuse, self.requests = list(statuses), refuse, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.refuse:
            status, message = self.refuse
            return httpx.Response(status, json={"error": {"message": message, "type": "x", "param": None, "code": status}})
        path = request.url.path
        if path.startswith("/admin/releases/"):
            status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
            return httpx.Response(200, json={"n": int(path.rsplit("/", 1)[1]), "status": status, "config": {}})
        if request.method in ("POST", "DELETE"):
            return httpx.Response(202, json={"release": 7, "status": "deploying", "changed": ["args.rag"]})
        if path == "/admin/status":
            return httpx.Response(200, json={"current_release": 3, "deployments": {}})
        return httpx.Response(404, json={"error": {"message": "not found"}})


class FakeTime:
    def __init__(self):
        self.now, self.slept = 0.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


def _client(fake, key="k1", t: FakeTime | None = None, **kw) -> AdminClient:
    t = t or FakeTime()
    return AdminClient("http://app", key, transport=httpx.MockTransport(fake), clock=t.clock, sleep=t.sleep, **kw)


def test_the_key_is_sent_as_a_bearer_header(monkeypatch, tmp_path):
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY", raising=False)
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY_FILE", raising=False)
    fake = FakeAdmin()
    assert _client(fake).status()["current_release"] == 3
    assert fake.requests[-1].headers["authorization"] == "Bearer k1"
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY_FILE", str(tmp_path / "key"))
    (tmp_path / "key").write_text("from-file\n")
    _client(fake, key=None).status()
    assert fake.requests[-1].headers["authorization"] == "Bearer from-file"
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY", "from-env")  # the variable wins over the file
    _client(fake, key=None).status()
    assert fake.requests[-1].headers["authorization"] == "Bearer from-env"
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY")
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY_FILE")
    _client(fake, key=None).status()
    assert "authorization" not in fake.requests[-1].headers


def test_follow_stops_at_the_first_status_that_is_not_deploying():
    fake, t = FakeAdmin(["deploying", "deploying", "rolled_back"]), FakeTime()
    rel = _client(fake, t=t).follow(7, timeout_s=60)
    assert rel["status"] == "rolled_back" and rel["n"] == 7
    assert [r.url.path for r in fake.requests] == ["/admin/releases/7"] * 3
    assert t.slept == [0.5, 0.5]


def test_follow_is_bounded():
    fake, t = FakeAdmin(["deploying"]), FakeTime()
    with pytest.raises(TimeoutError, match="release 7 still deploying after 2s"):
        _client(fake, t=t).follow(7, timeout_s=2)
    assert set(t.slept) == {0.5} and sum(t.slept) == 2.0


def test_a_refused_call_is_an_admin_error_with_status_and_message():
    client = _client(FakeAdmin(refuse=(409, "release 6 is still being deployed")))
    with pytest.raises(AdminError) as err:
        client.deploy({"applications": []}, note="x")
    assert err.value.status == 409 and err.value.message == "release 6 is still being deployed"
    assert isinstance(err.value, httpx.HTTPError) and err.value.response.status_code == 409
    # Raw responses stay available for callers that check status codes themselves.
    assert client.get("/admin/status").status_code == 409


def test_calls_send_the_admin_apis_bodies():
    fake = FakeAdmin()
    client = _client(fake)
    assert client.deploy({"applications": []}, "why", canary={"share": 0.2})["release"] == 7
    client.deploy({"applications": []}, model="tiny")
    client.rollback()
    client.rollback(model="tiny")
    client.scale(DEPLOYMENT, replicas=2)
    client.remove_model("tiny")
    assert [(r.method, r.url.path, json.loads(r.content or b"null")) for r in fake.requests] == [
        ("POST", "/admin/releases", {"config": {"applications": []}, "note": "why", "model": None, "component": None,
                                     "canary": {"share": 0.2}}),
        ("POST", "/admin/releases", {"config": {"applications": []}, "note": None, "model": "tiny",
                                     "component": None}),
        ("POST", "/admin/rollback", {"release": None, "model": None, "component": None}),
        ("POST", "/admin/rollback", {"release": None, "model": "tiny", "component": None}),
        ("POST", "/admin/scale", {"deployment": DEPLOYMENT, "replicas": 2, "factor": None}),
        ("DELETE", "/admin/models/tiny", None),
    ]


# ------------------------------------------------------------------------------------ admin subcommands


@pytest.fixture
def fake_app(monkeypatch):
    """The admin subcommands' client talks to a FakeAdmin instead of --url."""

    def install(fake: FakeAdmin) -> FakeAdmin:
        monkeypatch.setattr(cli_admin, "AdminClient", lambda url, **kw: _client(fake, **kw))
        return fake

    return install


def test_scale_follows_its_release_and_exits_0_when_good(fake_app, capsys):
    fake = fake_app(FakeAdmin(["good"]))
    assert main(["scale", DEPLOYMENT, "--replicas", "2"]) == 0
    assert [(r.method, r.url.path) for r in fake.requests] == [("POST", "/admin/scale"), ("GET", "/admin/releases/7")]
    out = capsys.readouterr()
    assert json.loads(out.out)["status"] == "good" and "scaling as release 7" in out.err


def test_a_models_release_rollback_and_removal_name_the_model(fake_app, tmp_path, capsys):
    fake = fake_app(FakeAdmin(["good"]))
    release = tmp_path / "release.yaml"
    release.write_text("applications: []\n")
    assert main(["deploy", "--model", "tiny", str(release)]) == 0
    assert main(["rollback", "--component", "retrieval"]) == 0
    assert main(["remove-model", "tiny"]) == 0
    sent = [(r.method, r.url.path, json.loads(r.content or b"null")) for r in fake.requests if r.method != "GET"]
    assert sent[0][2]["model"] == "tiny" and sent[0][2]["component"] is None
    assert sent[1][:2] == ("POST", "/admin/rollback") and sent[1][2]["component"] == "retrieval"
    assert sent[2][:2] == ("DELETE", "/admin/models/tiny")
    assert "removing tiny as release 7" in capsys.readouterr().err


def test_a_refusal_exits_1_with_the_message(fake_app, capsys):
    fake_app(FakeAdmin(refuse=(401, "missing or invalid admin key")))
    assert main(["status"]) == 1
    assert "401: missing or invalid admin key" in capsys.readouterr().err


def test_an_unreachable_app_exits_2(capsys):
    assert main(["status", "--url", "http://127.0.0.1:9"]) == 2
    assert "cannot reach http://127.0.0.1:9" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- public surface


def test_import_serve_app_imports_neither_ray_nor_vllm():
    code = "import sys, serve_app; print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'vllm', 'torch'}))"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_public_names_resolve():
    from serve_app.config.loader import load_serve_config
    from serve_app.config.settings import AppSettings

    assert serve_app.AppSettings is AppSettings and serve_app.load_serve_config is load_serve_config
    assert serve_app.AdminClient is AdminClient and serve_app.AdminError is AdminError
    assert set(serve_app.__all__) <= set(dir(serve_app))
    with pytest.raises(AttributeError):
        _ = serve_app.nothing_here
