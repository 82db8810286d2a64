"""Reading a streamed OpenAI-style answer (server-sent events) in the benchmarks' clients (rag.py, routing.py)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any]]:
    """Each ``data:`` event of ``response`` as JSON, up to ``[DONE]``."""
    async for line in response.aiter_lines():
        if not line.startswith("data: "):
            continue
        if line == "data: [DONE]":
            return
        yield json.loads(line[6:])
