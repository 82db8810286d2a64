"""T9: Ray Serve's controller killed under load (SIGKILL of its process). Pass: no request fails (the
proxies and replicas serve on without it); Ray restarts the controller and the admin API (which reads
Serve's status through it) answers again without manual action."""

import signal
import time

import pytest

from benchmarks.load import Load
from tests.chaos.faults import titled
from tests.polling import WaitTimeout, wait_healthy, wait_until

pytestmark = pytest.mark.chaos


def test_t9_serve_controller_killed_under_load_fails_nothing(app_proc, http, admin, model_name, reliability):
    wait_healthy(http)
    controllers = titled(app_proc.pid, "ray::ServeController")
    assert len(controllers) == 1, controllers
    old = controllers[0]
    with Load(app_proc.url, model_name, clients=2) as load:
        load.wait_for(4, started_after=0)
        t_kill = time.time()
        old.send_signal(signal.SIGKILL)

        def back() -> float | None:  # when a new controller runs and the admin API answers through it
            new = [p for p in titled(app_proc.pid, "ray::ServeController") if p.pid != old.pid]
            return time.time() if new and admin.get("/admin/status").status_code == 200 else None

        try:
            restarted_at = wait_until(back, 120, what="a new Serve controller, the admin API answering")
        except WaitTimeout:
            restarted_at = None  # recorded as such, then asserted below
        load.wait_for(6)  # requests served with the new controller in place
    summary = load.summary(fault_at=t_kill)
    reliability.record("T9", "Serve controller killed (SIGKILL), 2 clients", **summary,
                       controller_back_after_s=None if restarted_at is None else round(restarted_at - t_kill, 1))
    assert restarted_at is not None, "the Serve controller did not come back"
    assert [r for r in load.records if r["t"] > t_kill], "no request was sent after the kill"
    assert not load.failed(), load.failed()[:5]
    wait_healthy(http)
