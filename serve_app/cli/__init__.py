"""``serve-app`` command line: run the app from a Serve config file, prepare the default model, operate a
running app through its admin API, make API keys, ingest documents, run the benchmark suite."""

from __future__ import annotations

import argparse
import sys


def say(msg: str) -> None:
    """A progress or error line of the command (stderr: stdout carries the command's output)."""
    print(f"[serve-app] {msg}", file=sys.stderr, flush=True)


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions as written, and each option's default, except where the help text already says it or
    there is none to show (None: the help says what happens then; a flag's False)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """An argument parser with HelpFormatter; its subparsers are Parsers too (argparse makes them of the
    parent's class), so every `serve-app … --help` shows defaults."""

    def __init__(self, *args, **kw):
        kw.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kw)


def version() -> str:
    from serve_app import __version__

    return __version__


def build_parser() -> Parser:
    # Each module registers its own subcommands; imported here, not at the top, because they import this
    # module (say, Parser) and so that importing serve_app.cli stays cheap.
    from serve_app.cli import admin, bench, ingest, keys, run

    parser = Parser(prog="serve-app", description=__doc__)
    parser.add_argument("--version", action="version", version=f"%(prog)s {version()}")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    run.register(sub)
    keys.register(sub)
    admin.register(sub)
    ingest.register(sub)
    bench.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["bench"]:
        # The suite parses its own arguments (and answers `serve-app bench --help` itself).
        from serve_app.cli.bench import run_suite

        return run_suite(args[1:])
    ns = build_parser().parse_args(args)
    return ns.func(ns)
