"""Relaying streams: vLLM's SSE lines from an LLM handle call, and the app's own event streams (RAG, agent),
both ending with ``[DONE]`` and turning a failure in the middle into an in-band error event
(serve_app/protocol/stream.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from serve_app.protocol.stream import DONE, error_event, is_done, sse

async def relay_stream(gen) -> AsyncGenerator[str, None]:
    """Relay SSE lines from the replica. A failure mid-stream ends it with an in-band error and [DONE],
    the way vLLM reports generation errors, so clients never see a silently truncated stream."""
    done = False
    try:
        async for line in gen:
            if is_done(line):
                done = True
            yield line
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into an in-band error event
        yield error_event(exc, "the model replica failed during the stream")
        if not done:
            yield DONE
    finally:
        # Client gone or stream ended: make sure the replica stops generating (aborts the vLLM request).
        gen.cancel()


async def sse_events(events: AsyncIterator[dict[str, Any]]) -> AsyncGenerator[str, None]:
    """Serve our own event stream (RAG, agent) as SSE: one JSON object per event, then ``[DONE]``. A
    failure mid-stream becomes an in-band error event, as in ``relay_stream``."""
    try:
        async for event in events:
            yield sse(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into an in-band error event
        yield error_event(exc, "a component failed during the stream")
    finally:
        await events.aclose()
    yield DONE
