"""Relaying streams: vLLM's SSE lines from an LLM handle call, and the app's own event streams (RAG, agent),
both ending with ``[DONE]`` and turning a failure in the middle into an in-band error event
(serve_app/protocol/stream.py).

Both have an idle deadline: a stream whose next event does not come within it (a wedged replica, a lost
actor whose death Ray has not reported) ends with an in-band 504 error event and ``[DONE]``, and the
generation behind it is cancelled. The app's own streams also send an SSE comment every ``keepalive_s`` while
they wait, so that proxies that drop idle connections keep a stream whose component is quiet but alive (an
agent's step, a RAG answer's first token); the comments do not reset the idle deadline. vLLM sends none on its
own streams, and neither does the chat/completions relay."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Any

from serve_app.config.settings import IngressSettings
from serve_app.errors import UpstreamTimeout
from serve_app.protocol.stream import DONE, KEEPALIVE, error_event, is_done, sse

# For callers without settings at hand: the setting's default.
IDLE_TIMEOUT_S: float = IngressSettings.model_fields["stream_idle_timeout_s"].default


def _idle(idle_timeout_s: float) -> UpstreamTimeout:
    return UpstreamTimeout(f"the stream sent nothing for {idle_timeout_s:g}s")


async def relay_stream(gen, idle_timeout_s: float = IDLE_TIMEOUT_S) -> AsyncGenerator[str, None]:
    """Relay SSE lines from the replica. A failure mid-stream, or no line within ``idle_timeout_s`` of the
    last, ends it with an in-band error and [DONE], the way vLLM reports generation errors, so clients never see
    a silently truncated stream."""
    done = False
    try:
        while True:
            try:
                # On timeout wait_for cancels the pending __anext__; for Serve's response generator that only
                # stops waiting (the call itself is cancelled below).
                line = await asyncio.wait_for(gen.__anext__(), idle_timeout_s)
            except StopAsyncIteration:
                break
            except TimeoutError:
                gen.cancel()  # the replica stops before the error event goes out
                raise _idle(idle_timeout_s) from None
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
        # Client gone, stream ended or idle: make sure the replica stops generating (aborts the vLLM request).
        gen.cancel()


async def sse_events(events: AsyncGenerator[dict[str, Any], None], idle_timeout_s: float = IDLE_TIMEOUT_S,
                     keepalive_s: float = 0.0) -> AsyncGenerator[str, None]:
    """Serve our own event stream (RAG, agent) as SSE: one JSON object per event, then ``[DONE]``. A
    failure mid-stream, or no event within ``idle_timeout_s`` of the last, becomes an in-band error event, as in
    ``relay_stream``. While waiting, a keep-alive comment every ``keepalive_s`` seconds (0: none)."""
    loop = asyncio.get_running_loop()
    pending: asyncio.Future | None = None
    try:
        while True:
            # The next event is awaited in a task of its own, so that a keep-alive tick stops waiting for it
            # without cancelling it (cancelling it would end the producer).
            pending = asyncio.ensure_future(events.__anext__())
            idle_until = loop.time() + idle_timeout_s
            while True:
                left = idle_until - loop.time()
                wait = min(left, keepalive_s) if keepalive_s > 0 else left
                done, _ = await asyncio.wait({pending}, timeout=wait)
                if done:
                    break
                if wait >= left:  # the idle deadline was this wait's bound, not a keep-alive tick
                    waited, pending = pending, None
                    await _cancel(waited)  # the producer stops before the error event goes out
                    raise _idle(idle_timeout_s)
                yield KEEPALIVE
            try:
                event = pending.result()
            except StopAsyncIteration:
                break
            finally:
                pending = None
            yield sse(event)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into an in-band error event
        yield error_event(exc, "a component failed during the stream")
    finally:
        if pending is not None:  # the client went away between two events
            await _cancel(pending)
        await events.aclose()
    yield DONE


async def _cancel(pending: asyncio.Future) -> None:
    """Cancel the producer where it waits (which cancels the handle call it waits on) and let that finish
    before the producer is closed: closing a generator that is still running raises."""
    pending.cancel()
    await asyncio.wait({pending})
    if not pending.cancelled():
        pending.exception()  # retrieved: it finished (or failed) as it was cancelled; nobody wants it now
