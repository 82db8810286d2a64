"""The child process that parses one file: ``python -m serve_app.files.worker`` with a JSON request on stdin
(``path``, ``name``, ``kind``, ``max_expanded_bytes``, ``max_chars``, ``memory_bytes``, ``cpu_s``), the
sections or the refusal as JSON on stdout. It limits its own address space and CPU time before importing any parser, so a
file that makes a parser allocate or loop without end ends this process, never the replica that started it
(serve_app/files/sandbox.py reads a killed child as such)."""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path
from typing import Any


def main() -> int:
    request = json.loads(sys.stdin.read())
    memory = _limit(resource.RLIMIT_AS, int(request["memory_bytes"]))
    _limit(resource.RLIMIT_CPU, int(request["cpu_s"]), grace=1)
    _limit(resource.RLIMIT_CORE, 0)  # a parser crash writes no core file of up to the memory limit

    from serve_app.errors import UnreadableFile
    from serve_app.files.parse import parse

    out: dict[str, Any]
    try:
        sections = parse(Path(request["path"]), request["name"], request["kind"], int(request["max_expanded_bytes"]))
        chars = sum(len(s.text) for s in sections)
        if chars > int(request["max_chars"]):
            # Refused here, so the replica never holds (or parses the JSON of) a text it would refuse anyway.
            out = {"error": f"{request['name']}: its text is {chars} characters, over the {request['max_chars']} a "
                            "document may have (vector.max_document_chars)", "status": 413}
        else:
            out = {"sections": [s.to_dict() for s in sections]}
    except UnreadableFile as exc:
        out = {"error": exc.message}
    except MemoryError:
        out = {"error": f"{request['name']}: reading it takes more than the parser's memory limit "
                        f"({memory >> 20} MiB, files.parse_memory_mb)"}
    except RecursionError:
        out = {"error": f"{request['name']}: nested too deeply to read"}
    sys.stdout.write(json.dumps(out))
    return 0


def _limit(kind: int, value: int, grace: int = 0) -> int:
    """Set the soft limit to ``value`` and the hard one ``grace`` above it, neither above the inherited hard
    limit (raising it is refused). CPU time: SIGXCPU at the soft limit, SIGKILL a second later."""
    _, hard = resource.getrlimit(kind)
    soft = value if hard == resource.RLIM_INFINITY else min(value, hard)
    new_hard = soft + grace if hard == resource.RLIM_INFINITY else min(soft + grace, hard)
    resource.setrlimit(kind, (soft, new_hard))
    return soft


if __name__ == "__main__":
    sys.exit(main())
