"""Parse a file in a child process with time and memory limits (serve_app/files/worker.py): the replica or job
that asks never runs a parser itself, so a hostile file can cost it neither memory nor an event loop. The
child's answer, or its end (killed past the time limit, out of memory, crashed), becomes the sections or an
UnreadableFile (422) naming the file and the reason."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serve_app.errors import PayloadTooLarge, UnreadableFile
from serve_app.files.kinds import Kind


@dataclass(frozen=True)
class ParseLimits:
    timeout_s: float = 30.0
    memory_bytes: int = 1 << 30
    max_expanded_bytes: int = 200 << 20
    max_chars: int = 1_000_000  # vector.max_document_chars: a longer text is refused in the child (413)


def _request(path: Path, name: str, kind: Kind, limits: ParseLimits) -> bytes:
    return json.dumps({"path": str(path), "name": name, "kind": kind, "memory_bytes": limits.memory_bytes,
                       "cpu_s": max(1, int(limits.timeout_s)), "max_expanded_bytes": limits.max_expanded_bytes,
                       "max_chars": limits.max_chars}).encode()


def _answer(name: str, returncode: int | None, stdout: bytes, limits: ParseLimits) -> list[dict[str, Any]]:
    if returncode is None:
        raise UnreadableFile(f"{name}: reading it took longer than {limits.timeout_s:g}s (files.parse_timeout_s)",
                             "file")
    try:
        out = json.loads(stdout)
    except ValueError:
        out = None
    if returncode != 0 or not isinstance(out, dict):
        # Killed by its CPU limit (SIGXCPU), by the kernel, or a crash inside a parser's C code.
        raise UnreadableFile(f"{name}: the parser stopped without an answer (exit {returncode}): the file is "
                             "damaged or needs more than the parser's time or memory limits", "file")
    if "error" in out:
        raise (PayloadTooLarge if out.get("status") == 413 else UnreadableFile)(out["error"], "file")
    return out["sections"]


_CMD = [sys.executable, "-m", "serve_app.files.worker"]
# What the child inherits of the environment: what it needs to run Python and find the package, none of the
# replica's secrets.
_ENV_KEYS = ("PATH", "PYTHONPATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "VIRTUAL_ENV")


def _env() -> dict[str, str]:
    return {k: os.environ[k] for k in _ENV_KEYS if k in os.environ}


async def parse_in_child(path: Path, name: str, kind: Kind, limits: ParseLimits) -> list[dict[str, Any]]:
    """The file's sections (``{"text", "page", "section"}``), parsed in a child process; UnreadableFile when it
    cannot be read within the limits."""
    proc = await asyncio.create_subprocess_exec(*_CMD, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                                stderr=subprocess.DEVNULL, env=_env())
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(_request(path, name, kind, limits)), limits.timeout_s)
    except TimeoutError:
        return _answer(name, None, b"", limits)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return _answer(name, proc.returncode, stdout, limits)


def parse_in_child_blocking(path: Path, name: str, kind: Kind, limits: ParseLimits) -> list[dict[str, Any]]:
    """The same from synchronous code (the batch-ingest job)."""
    try:
        done = subprocess.run(_CMD, input=_request(path, name, kind, limits), capture_output=True,
                              timeout=limits.timeout_s, env=_env())
    except subprocess.TimeoutExpired:
        return _answer(name, None, b"", limits)
    return _answer(name, done.returncode, done.stdout, limits)
