"""Batch ingest as a Ray job: a folder of document files (PDF, Word, HTML, Markdown, text) or a JSONL file into
the running app's vector store.

    ray job submit --address http://HEAD:8265 --working-dir . -- python -m serve_app.jobs.ingest PATH --tenant T
    serve-app ingest PATH --tenant T   (the same as a command: on a node of the cluster, or with --address)

The documents are the tenant's (``--tenant``: the tenant of that team's API keys; none: the keyless tenant, whose
documents every request reaches while keys are off).

Each file becomes one document (id: its path relative to PATH; metadata: source, suffix and kind), its kind
told by its content and read in a child process with time and memory limits (serve_app/files), each chunk
knowing its page or heading path; a file that cannot be read (encrypted, damaged, without text, a zip bomb, a
name that lies about its kind) is refused and reported with the reason. A JSONL file holds one {"id", "text",
"metadata"} object per line. Documents are validated with the same model as
POST /v1/documents and against the same limits (serve_app/vector/limits.py, with the running app's
settings): a document over a limit, or whose id came before, is refused and reported, never written, and
the others go on. Documents are sent in batches to the app's VectorStore deployment through its Serve
handle; a failed batch is retried with exponential backoff (the app's retry policy, serve_app/calls/retry.py),
and a batch the deployment refuses (over its write budget; never retried) is split until each refused
document stands alone. Ingest is idempotent by id and content: running the job again changes nothing and embeds nothing. Exit status 2
when a document was refused.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import ValidationError

from serve_app.calls.handles import call_blocking
from serve_app.calls.retry import RetryPolicy
from serve_app.config.components import component_app
from serve_app.config.names import VECTOR_STORE
from serve_app.config.settings import VectorSettings
from serve_app.errors import AppError, UnreadableFile, UnsupportedFile, status_for, unwrap
from serve_app.files.kinds import EXTENSIONS, detect
from serve_app.files.parse import markdown_sections
from serve_app.files.sandbox import ParseLimits, parse_in_child_blocking
from serve_app.protocol.keys import NAME_PATTERN
from serve_app.protocol.retrieval import Document, LocatedDocument
from serve_app.vector.limits import check_document

SUFFIXES = set(EXTENSIONS)
_LIMITS = ParseLimits()  # the files' default limits (serve_app/config/file_settings.py)


def iter_documents(path: Path, refuse: Callable[[str, str], None] = lambda name, why: None,
                   limits: ParseLimits = _LIMITS) -> Iterator[Document]:
    """The documents under ``path``: a folder's files (PDF, Word, HTML, Markdown, text: their kind told by
    content, parsed in a child process with ``limits``, serve_app/files) or a JSONL file's lines. A file that
    cannot be read is passed to ``refuse`` with the reason, and the others go on."""
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES):
            rel = f.relative_to(path).as_posix()
            with f.open("rb") as fh:
                if not fh.read(4096).strip():
                    continue  # empty: nothing to ingest, nothing wrong
            try:
                kind = detect(f, rel)
                if kind in ("markdown", "text"):
                    text = f.read_text(encoding="utf-8", errors="replace")
                    sections = [s.to_dict() for s in markdown_sections(text)] if kind == "markdown" else None
                else:
                    sections = parse_in_child_blocking(f, rel, kind, limits)
                    text = "\n\n".join(s["text"] for s in sections)
            except (UnsupportedFile, UnreadableFile) as exc:
                refuse(rel, exc.message)
                continue
            if not text.strip():
                continue
            yield LocatedDocument.model_validate({
                "id": rel, "text": text, "sections": sections,
                "metadata": {"source": rel, "suffix": f.suffix.lower().lstrip("."), "kind": kind}})
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
        raise SystemExit(f"{path}: expected a folder of document files or a .jsonl file")


def batches(docs: Iterator[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for d in docs:
        batch.append(d)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def refusal(doc: Document, s: VectorSettings) -> str | None:
    """Why the API would refuse ``doc`` alone (the same checks, the same message), or None."""
    try:
        check_document(doc.model_dump(), s, "document")
    except AppError as exc:
        return exc.message  # it names the field: "document.metadata.title is 5000 characters long; ..."
    return None


def _client_error(exc: BaseException) -> AppError | None:
    """The request's own fault (a 4xx the deployment answered), which no retry changes."""
    cause = unwrap(exc)
    status = status_for(cause)
    return cause if isinstance(cause, AppError) and status is not None and 400 <= status < 500 else None


def send_with_retry(send, batch: list[Document], attempts: int, backoff_s: float,
                    sleep: Callable[[float], None] = time.sleep) -> list[dict]:
    """``send(batch)``, retried with exponential backoff unless the deployment refused the batch (a 4xx)."""
    payload = [d.model_dump() for d in batch]
    policy = RetryPolicy(attempts, backoff_s, give_up=lambda exc: _client_error(exc) is not None)

    def log(attempt: int, exc: BaseException, wait_s: float) -> None:
        print(f"batch failed ({type(exc).__name__}: {exc}); retry {attempt}/{attempts - 1} in {wait_s:.1f}s",
              file=sys.stderr)

    return policy.run(lambda: send(payload), on_retry=log, sleep=sleep)


class Ingest:
    """Checks, sends and counts documents: ``send(payload)`` is the VectorStore deployment's ``ingest``."""

    def __init__(self, send, s: VectorSettings, attempts: int = 4, backoff_s: float = 1.0, report=print,
                 sleep: Callable[[float], None] = time.sleep):
        self.send, self.s, self.attempts, self.backoff_s, self.report = send, s, attempts, backoff_s, report
        self.sleep = sleep  # between two tries of a batch
        self.documents = self.chunks = 0
        self.refused: list[tuple[str, str]] = []  # (document id, why), in input order
        self._seen: set[str] = set()

    def admit(self, doc: Document) -> bool:
        """Whether ``doc`` may be sent; a refused one is reported and counted."""
        why = "its id appears earlier in the input" if doc.id in self._seen else refusal(doc, self.s)
        self._seen.add(doc.id)
        if why is not None:
            self.refuse(doc.id, why)
        return why is None

    def batch(self, batch: list[Document]) -> None:
        """Send ``batch``; one the deployment refuses is split in halves, down to the refused documents."""
        if not batch:
            return
        try:
            result = send_with_retry(self.send, batch, self.attempts, self.backoff_s, self.sleep)
        except Exception as exc:
            refused = _client_error(exc)
            if refused is None:
                raise
            if len(batch) == 1:
                self.refuse(batch[0].id, refused.message)
                return
            half = len(batch) // 2
            self.batch(batch[:half])
            self.batch(batch[half:])
            return
        self.documents += len(result)
        self.chunks += sum(r["chunks"] for r in result)

    def refuse(self, doc_id: str, why: str) -> None:
        self.refused.append((doc_id, why))
        self.report(f"refused {doc_id!r}: {why}")

    def summary(self) -> dict[str, int]:
        return {"documents": self.documents, "chunks": self.chunks, "refused": len(self.refused)}


class _Help(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The job's options, on its own parser and on `serve-app ingest`'s."""
    p.add_argument("path", type=Path, help="a folder of document files (.pdf .docx .html .md .txt), or a .jsonl file")
    p.add_argument("--app", default="serve_app", help="the app's name in its config file; the job calls the "
                   "VectorStore of its retrieval application, <app>-retrieval")
    p.add_argument("--batch-size", type=int, default=32, help="documents per call of the VectorStore deployment")
    p.add_argument("--attempts", type=int, default=4, help="tries of a batch before the job fails")
    p.add_argument("--backoff", type=float, default=1.0, help="seconds before the first retry (doubled each time)")
    p.add_argument("--address", default=None, help="Ray address (none: the job's cluster, or a local one)")
    p.add_argument("--tenant", default="", type=_tenant,
                   help="whose documents these are: the tenant of that team's API keys (none: the keyless tenant)")


def _tenant(value: str) -> str:
    if value and not re.fullmatch(NAME_PATTERN, value) or len(value) > 64:
        raise argparse.ArgumentTypeError(f"{value!r} is not a tenant name (letters, digits, _ . @ -; 64 at most)")
    return value


def run(ns: argparse.Namespace) -> int:
    """Ingest ns.path (the options of add_arguments); prints the counts, returns the exit status."""
    import ray
    from ray import serve
    from tqdm import tqdm

    unreadable: list[tuple[str, str]] = []  # files that could not be read: refused like invalid documents
    docs = list(iter_documents(ns.path, lambda name, why: unreadable.append((name, why))))
    if not docs:
        for name, why in unreadable:
            print(f"refused {name!r}: {why}", file=sys.stderr)
        print(f"no documents under {ns.path}")
        return 2 if unreadable else 1
    ray.init(address=ns.address or "auto", namespace="serve", log_to_driver=False)
    handle = serve.get_deployment_handle(VECTOR_STORE, app_name=component_app(ns.app, VECTOR_STORE))
    # The running app's limits, not this machine's defaults: its config may set others.
    limits = VectorSettings.model_validate(call_blocking(handle, "limits", timeout_s=60))
    size = min(ns.batch_size, limits.max_documents_per_request)
    send = lambda payload: call_blocking(handle, "ingest", payload, tenant=ns.tenant, timeout_s=300)  # noqa: E731
    job = Ingest(send, limits, ns.attempts, ns.backoff, report=lambda line: tqdm.write(line, file=sys.stderr))
    for name, why in unreadable:
        job.refuse(name, why)
    with tqdm(total=len(docs), unit="doc", desc="ingest", file=sys.stdout) as bar:
        for batch in batches(iter(docs), size):
            job.batch([d for d in batch if job.admit(d)])
            bar.update(len(batch))
    print(json.dumps(job.summary()))
    return 2 if job.refused else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m serve_app.jobs.ingest", description=__doc__, formatter_class=_Help)
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
