"""Batch ingest as a Ray job: a folder of .txt/.md files or a JSONL file into the running app's vector store.

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m serve_app.jobs.ingest PATH
    serve-app ingest PATH        (the same as a command: on a node of the cluster, or with --address)

Each file becomes one document (id: its path relative to PATH; metadata: source and suffix); a JSONL file
holds one {"id", "text", "metadata"} object per line. Documents are validated with the same model as
POST /v1/documents, sent in batches to the app's VectorStore deployment through its Serve handle, and a
failed batch is retried with exponential backoff. Ingest is idempotent by id: running the job again
changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from pydantic import ValidationError

from serve_app.calls.handles import call_blocking
from serve_app.protocol.retrieval import Document

SUFFIXES = {".txt", ".md"}


def iter_documents(path: Path) -> Iterator[Document]:
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
            text = f.read_text(encoding="utf-8", errors="replace")
            if not text.strip():
                continue
            rel = f.relative_to(path).as_posix()
            yield Document(id=rel, text=text, metadata={"source": rel, "suffix": f.suffix.lower().lstrip(".")})
    elif path.suffix.lower() == ".jsonl":
        with path.open(encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    yield Document.model_validate_json(line)
                except ValidationError as exc:
                    raise SystemExit(f"{path}:{n}: invalid document: {exc.errors()[0]['msg']}") from None
    else:
        raise SystemExit(f"{path}: expected a folder of .txt/.md files or a .jsonl file")


def batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def send_with_retry(handle, batch: list[Document], attempts: int, backoff_s: float) -> list[dict]:
    payload = [d.model_dump() for d in batch]
    for attempt in range(1, attempts + 1):
        try:
            return call_blocking(handle, "ingest", payload, timeout_s=300)
        except Exception as exc:  # noqa: BLE001 - any failure of a batch is retried, then reported
            if attempt == attempts:
                raise
            wait = backoff_s * 2 ** (attempt - 1)
            print(f"batch failed ({type(exc).__name__}: {exc}); retry {attempt}/{attempts - 1} in {wait:.1f}s", file=sys.stderr)
            time.sleep(wait)
    raise AssertionError("unreachable")


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The job's options, on its own parser and on `serve-app ingest`'s."""
    p.add_argument("path", type=Path, help="a folder of .txt/.md files, or a .jsonl file")
    p.add_argument("--app", default="serve_app", help="Serve application name")
    p.add_argument("--batch-size", type=int, default=32, help="documents per call of the VectorStore deployment")
    p.add_argument("--attempts", type=int, default=4, help="tries of a batch before the job fails")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubled each time)")
    p.add_argument("--address", default=None, help="Ray address (none: the job's cluster, or a local one)")


def run(ns: argparse.Namespace) -> int:
    """Ingest ns.path (the options of add_arguments); prints the counts, returns the exit status."""
    import ray
    from ray import serve
    from tqdm import tqdm

    docs = list(iter_documents(ns.path))
    if not docs:
        print(f"no documents under {ns.path}")
        return 1
    ray.init(address=ns.address or "auto", namespace="serve", log_to_driver=False)
    handle = serve.get_deployment_handle("VectorStore", app_name=ns.app)
    done_docs = done_chunks = 0
    with tqdm(total=len(docs), unit="doc", desc="ingest", file=sys.stdout) as bar:
        for batch in batches(iter(docs), ns.batch_size):
            result = send_with_retry(handle, batch, ns.attempts, ns.backoff)
            done_docs += len(result)
            done_chunks += sum(r["chunks"] for r in result)
            bar.update(len(batch))
    print(json.dumps({"documents": done_docs, "chunks": done_chunks}))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app.jobs.ingest", description=__doc__, formatter_class=_Help)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
