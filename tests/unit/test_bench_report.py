"""The benchmark suite's report: every scenario's ratio table in the Markdown report with the machine and
versions, a failed scenario named with its error, CSV columns from all rows, and the command line refusing
an unknown scenario."""

import csv

import pytest

from benchmarks import suite


def test_report_has_machine_versions_and_each_scenario(tmp_path):
    results = {
        "chat": {"title": "Chat", "seconds": 12.0, "rows": [], "ratios": [{"concurrency": 8, "throughput_ratio": 0.93}]},
        "rollout": {"title": "Rollouts", "error": "RuntimeError('boom')", "seconds": 1.0},
    }
    meta = {"started": "now", "total_s": 13.0, "machine": suite.machine(), "versions": suite.versions(),
            "command": "serve-app bench chat rollout"}
    text = suite.report(results, meta, suite.RESULTS / "x")
    assert "## Machine" in text and "cpus" in text and "vllm" in text.lower()
    assert "| concurrency | throughput_ratio |" in text and "| 8 | 0.93 |" in text
    assert "![chat](chat.png)" in text and "Failed: `RuntimeError('boom')`" in text


def test_csv_has_the_union_of_columns(tmp_path):
    path = tmp_path / "x.csv"
    suite.write_csv([{"a": 1, "b": 2}, {"a": 3, "c": 4, "nested": {"x": 1}}], path)
    rows = list(csv.DictReader(path.open()))
    assert list(rows[0]) == ["a", "b", "c"] and rows[1]["c"] == "4" and rows[0]["c"] == ""


def test_unknown_scenario_is_refused():
    with pytest.raises(SystemExit) as err:
        suite.main(["nope"])
    assert err.value.code == 2


def test_table_cells_are_one_line():
    text = suite._table([{"outcome": "failed:\n\x1b[36mray::X\x1b[39m | more " + "x" * 300}])
    row = text.splitlines()[2]
    assert "\x1b" not in row and row.count("|") == 2 and len(row) < 200
