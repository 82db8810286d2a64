"""`serve-app bench`: the benchmark suite of a source checkout (benchmarks/suite.py), which parses its own
arguments."""

from __future__ import annotations

import sys
from pathlib import Path

from serve_app.cli import say


def run_suite(args: list[str]) -> int:
    # The suite lives beside the package in a source checkout (it starts bare vLLM and the app itself), not
    # in the installed package: found from the working directory, imported only here.
    root = Path.cwd()
    if not (root / "benchmarks" / "suite.py").exists():
        say("serve-app bench runs from the root of a serve_app source checkout (benchmarks/suite.py not found here)")
        return 2
    sys.path.insert(0, str(root))
    from benchmarks.suite import main as bench_main

    return bench_main(args)


def register(sub) -> None:
    # Listed for `serve-app --help` only: main() hands `bench …` to the suite before parsing.
    sub.add_parser("bench", add_help=False, help="run the benchmark suite of a source checkout (benchmarks/; "
                   "`serve-app bench --help` lists its scenarios)")
