"""`serve-app ingest PATH`: the batch ingest job (serve_app/jobs/ingest.py) as a subcommand, with the job's
own options and code."""

from __future__ import annotations

from serve_app.jobs import ingest


def register(sub) -> None:
    h = "ingest a folder of .txt/.md files or a JSONL file into the running app's vector store"
    p = sub.add_parser("ingest", help=h, description=ingest.__doc__)
    ingest.add_arguments(p)
    p.set_defaults(func=ingest.run)
