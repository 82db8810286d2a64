"""The child process that parses one file: ``python -m serve_app.files.worker`` with a JSON request on stdin
(``path``, ``name``, ``kind``, ``max_expanded_bytes``, ``memory_bytes``, ``cpu_s``), the sections or the
refusal as JSON on stdout. It limits its own address space and CPU time before importing any parser, so a
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
    memory = int(request["memory_bytes"])
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    cpu = int(request["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))

    from serve_app.errors import UnreadableFile
    from serve_app.files.parse import parse

    out: dict[str, Any]
    try:
        sections = parse(Path(request["path"]), request["name"], request["kind"], int(request["max_expanded_bytes"]))
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


if __name__ == "__main__":
    sys.exit(main())
