"""The background health monitor behind /healthz (serve_app/ingress/health_monitor.py): answers from memory
whatever the components do, reports a component that goes down within a period plus its probe's deadline."""

import asyncio
import time

import pytest

from serve_app.ingress.health_monitor import HealthMonitor, public

pytestmark = pytest.mark.unit


def test_a_hanging_and_a_failing_component_are_reported_and_snapshots_never_wait():
    state = {"llm": "up"}

    async def llm():
        if state["llm"] == "hang":
            await asyncio.sleep(3600)
        return {"pid": 42}

    async def vector():
        raise RuntimeError("store closed at /var/x")

    async def run():
        seen = []
        m = HealthMonitor({"llm": llm, "vector": vector}, period_s=0.05, timeout_s=0.1,
                          on_result=lambda name, rec: seen.append((name, rec["status"])))
        await m.first_round(1.0)
        first = m.snapshot()
        assert first["llm"]["status"] == "ok" and first["llm"]["pid"] == 42 and first["llm"]["age_s"] < 1
        assert first["vector"]["status"] == "unhealthy" and "RuntimeError" in first["vector"]["error"]
        state["llm"] = "hang"
        went_down = time.monotonic()
        worst = 0.0
        while m.snapshot()["llm"]["status"] == "ok":
            t = time.perf_counter()
            m.snapshot()
            worst = max(worst, time.perf_counter() - t)
            await asyncio.sleep(0.01)
            assert time.monotonic() - went_down < 1.0, "not reported within a period plus the deadline"
        assert "timed out" in m.snapshot()["llm"]["error"] and worst < 0.01
        assert ("llm", "ok") in seen and ("llm", "unhealthy") in seen
        shown = public(m.snapshot())
        assert set(shown["llm"]) == {"status", "age_s"} and "error" not in shown["vector"]
        m.stop()

    asyncio.run(run())


def test_components_not_probed_yet_and_stale_records_are_not_ok():
    now = [0.0]

    async def never():
        await asyncio.sleep(3600)

    async def run():
        m = HealthMonitor({"agent": never}, period_s=1, timeout_s=1, clock=lambda: now[0])
        assert m.snapshot()["agent"]["status"] == "unknown"
        m._records["agent"] = (0.0, {"status": "ok"})
        now[0] = m.max_age_s + 1
        assert m.snapshot()["agent"]["status"] == "unhealthy"

    asyncio.run(run())
