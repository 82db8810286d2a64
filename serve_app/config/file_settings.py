"""Settings of document files (``files`` in ``AppSettings``): uploads through /v1/files and the limits of the
child process that parses them (serve_app/files)."""

from __future__ import annotations

from pydantic import Field

from serve_app.config.base import Strict as _Strict


class FileSettings(_Strict):
    enabled: bool = Field(default=True, description="Serve /v1/files (needs the retrieval tier and the state store).")
    max_bytes: int = Field(
        default=25 << 20, ge=1024, le=1 << 32,
        description="Largest file an upload may bring, in bytes (413 above; checked while the upload streams to "
        "disk). Uploads are exempt from ingress.max_body_bytes, the JSON bodies' limit.")
    parse_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="Wall-clock and CPU time the child process may take to parse one file (422 past it).")
    parse_memory_mb: int = Field(
        default=1024, ge=256, le=1 << 20,
        description="Address space of the child process that parses one file, in MiB (422 past it).")
    max_expanded_mb: int = Field(
        default=200, ge=1, le=1 << 20,
        description="Largest total size a Word document's parts may expand to, by the archive's own directory, "
        "in MiB (a zip bomb: 422 before anything is decompressed).")
    wait_s: float = Field(
        default=10.0, ge=0, le=600,
        description="How long an upload waits for its file to be parsed and written before answering: a file "
        "refused by then is a 4xx; one still in work answers 200 with status 'uploaded', to poll at its URL.")
