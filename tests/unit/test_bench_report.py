"""The benchmark suite's report: every scenario's ratio table in the Markdown report with the machine and
versions, a failed scenario named with its error, CSV columns from all rows, and the command line refusing
an unknown scenario; the streamed answers the benchmarks' clients read."""

import csv

import pytest

from benchmarks import report, suite

pytestmark = pytest.mark.unit


def test_report_has_machine_versions_and_each_scenario(tmp_path):
    results = {
        "chat": {"title": "Chat", "seconds": 12.0, "rows": [], "ratios": [{"concurrency": 8, "throughput_ratio": 0.93}]},
        "rollout": {"title": "Rollouts", "error": "RuntimeError('boom')", "seconds": 1.0},
    }
    meta = {"started": "now", "total_s": 13.0, "machine": report.machine(), "versions": report.versions(),
            "command": "serve-app bench chat rollout", "app": "started as `serve-app run --isolate-engine-cpus`"}
    text = report.report(results, meta, suite.RESULTS / "x")
    assert "## Machine" in text and "cpus" in text and "vllm" in text.lower()
    assert "App under test: started as `serve-app run --isolate-engine-cpus`" in text
    assert "| concurrency | throughput_ratio |" in text and "| 8 | 0.93 |" in text
    assert "![chat](chat.png)" in text and "Failed: `RuntimeError('boom')`" in text


def test_csv_has_the_union_of_columns(tmp_path):
    path = tmp_path / "x.csv"
    report.write_csv([{"a": 1, "b": 2}, {"a": 3, "c": 4, "nested": {"x": 1}}], path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["a", "b", "c"] and rows[1]["c"] == "4" and rows[0]["c"] == ""


def test_unknown_scenario_is_refused():
    with pytest.raises(SystemExit) as err:
        suite.main(["nope"])
    assert err.value.code == 2


def test_table_cells_are_one_line():
    text = report._table([{"outcome": "failed:\n\x1b[36mray::X\x1b[39m | more " + "x" * 300}])
    row = text.splitlines()[2]
    assert "\x1b" not in row and row.count("|") == 2 and len(row) < 200


def test_cpu_accounting_counts_the_load_and_every_core():
    """The machine-wide CPU account of the `cpu` scenario: the load's own CPU lands under the load client,
    the roles of Ray's and vLLM's processes are told apart by their command lines, cores are all reported."""
    import os
    import time

    from benchmarks import cpu

    def load():
        t = time.process_time()
        while time.process_time() - t < 0.3:  # 0.3 s of CPU in this process: the load client's role
            pass
        return {"output_throughput": 1.0, "median_ttft_ms": 1.0, "median_itl_ms": 1.0, "failed": 0}

    r = cpu.measure(load)
    assert r["cpu_percent_of_a_core"][cpu.LOAD] > 10
    assert len(r["core_busy_percent"]) == os.cpu_count()
    rows = cpu.rows_of({"a": r})
    assert rows[-1]["role"] == "total" and rows[-1]["a_cpu_pct"] >= r["cpu_percent_of_a_core"][cpu.LOAD]
    assert cpu._role("ray::ServeReplica:serve_app:LLMServer") == cpu._role("python -m vllm.entrypoints.openai.api_server")
    assert cpu._role("VLLM::Worker") == cpu.ENGINE
    assert cpu._role("ray::ServeReplica:serve_app:Ingress") != cpu._role("ray::ServeReplica:serve_app:Embedder")


def test_the_benchmarks_read_streamed_events_up_to_done():
    import asyncio

    import httpx

    from benchmarks._sse import sse_events

    body = b'data: {"a": 1}\n\n: keep-alive\n\ndata: {"b": 2}\n\ndata: [DONE]\n\ndata: {"after": 3}\n\n'

    async def read():
        transport = httpx.MockTransport(lambda request: httpx.Response(200, content=body))
        async with httpx.AsyncClient(transport=transport, base_url="http://x") as c:
            async with c.stream("POST", "/v1/chat/completions") as r:
                return [e async for e in sse_events(r)]

    assert asyncio.run(read()) == [{"a": 1}, {"b": 2}]
