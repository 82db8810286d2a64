"""A real PostgreSQL for the tests: a new cluster in a temporary directory, on loopback, started and stopped by
the test session (`make test-tools` installs Debian's server package without creating or starting a cluster).

PostgreSQL refuses to run as root: as root, the cluster belongs to the `postgres` system user (the package
makes it) and every server command runs under `runuser`. ``SERVE_APP_TEST_PG_BINDIR`` names the folder of
initdb and pg_ctl where they are neither on PATH nor in Debian's /usr/lib/postgresql/<version>/bin.
"""

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

USER = "serve_app"


def _bindir() -> Path:
    if os.environ.get("SERVE_APP_TEST_PG_BINDIR"):
        return Path(os.environ["SERVE_APP_TEST_PG_BINDIR"])
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    if not versions:
        raise RuntimeError("PostgreSQL's server is not installed (make test installs it: make test-tools)")
    return Path(versions[-1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    def __init__(self):
        self.bin = _bindir()
        self.dir = Path(tempfile.mkdtemp(prefix="serve-app-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self._as: list[str] = []
        if os.getuid() == 0:
            owner = pwd.getpwnam("postgres")
            os.chown(self.dir, owner.pw_uid, owner.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        out = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({out.returncode}): {out.stderr[-2000:]}")

    def start(self) -> "Postgres":
        # Trust on loopback only, no fsync: a throwaway cluster whose speed is the suite's.
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", USER, "-A", "trust", "--no-sync",
                  "-E", "UTF8")
        return self.resume()

    def pause(self) -> None:
        """Stop the server, keeping its data (a store outage); ``resume`` starts it again on the same port."""
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")

    def resume(self) -> "Postgres":
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c fsync=off"
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", options, "-l", str(self.dir / "log"),
                  "-w", "-t", "60", "start")
        return self

    def stop(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)


def remove_api_keys(url: str) -> None:
    """Delete every API key and rate-limit bucket of the store at ``url`` and bump the keys' change counter, so
    the ingress replicas turn key checking off within their poll. The admin API only revokes (a revoked key
    keeps checking on); a test that turned keys on gives the suite's anonymous callers the app back this way."""
    from sqlalchemy import create_engine, delete, update

    from serve_app.state.tables import api_keys, rate_buckets, versions

    engine = create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        with engine.begin() as conn:
            conn.execute(delete(api_keys))
            conn.execute(delete(rate_buckets))
            conn.execute(update(versions).where(versions.c.name == "keys").values(n=versions.c.n + 1))
    finally:
        engine.dispose()
