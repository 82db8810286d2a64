"""The Responses API, served by translation onto chat completions (serve_app/responses/items.py), its state in
the shared store (serve_app/state/responses.py), scoped to the API key's tenant.

Why not vLLM's own serving layer for /v1/responses: it keeps stored responses in dicts inside one LLM
replica (a follow-up on another replica, or after a restart, fails; nothing is ever evicted), has no DELETE,
``input_items`` or conversations, and drops function calls from a ``previous_response_id`` context. A
response served as a chat completion gets everything a chat request gets: the model's chat template and
tool parser, adapters, canaries, scale to zero, the key's allow-list and token limit, metrics and traces.

A response is stored once its answer is complete, before its final event is sent: a client that has the
answer can follow up on any replica at once. A stream that fails stores nothing.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import Any, ParamSpec, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import ValidationError

from serve_app.errors import InvalidRequest, NotFound, ServiceUnavailable
from serve_app.ingress.chat_checks import check_messages, check_tools
from serve_app.ingress.context import IngressContext, api_key, tenant_of
from serve_app.ingress.limits import charge_tokens
from serve_app.ingress.llm_serving import check_sampling, session_header, start
from serve_app.protocol.openai import ChatCompletionRequest
from serve_app.protocol.responses import ResponseCreate
from serve_app.protocol.stream import ErrorEvent, data_of, is_done
from serve_app.responses import items as it
from serve_app.responses.events import StreamEvents, sse_event
from serve_app.state.responses import ResponseStore

logger = logging.getLogger("ray.serve")
P = ParamSpec("P")
R = TypeVar("R")

ROUTE = "/v1/responses"
# How often one replica deletes the responses past their retention (one statement for every tenant).
PRUNE_PERIOD_S = 600.0


def page(items: list[dict[str, Any]], after: str | None, limit: int, order: str) -> dict[str, Any]:
    """One page of a list of items, as OpenAI lists them (``order`` "asc" or "desc", after the item ``after``)."""
    seq = items if order == "asc" else items[::-1]
    begin = 0
    if after is not None:
        ids = [i["id"] for i in seq]
        if after not in ids:
            raise InvalidRequest(f"no item {after!r} in this list", "after")
        begin = ids.index(after) + 1
    data = seq[begin:begin + limit]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": begin + limit < len(seq)}


class Responses:
    """The Responses API's work for one request, on the replica's context."""

    def __init__(self, ctx: IngressContext):
        self.store, self.ctx = ctx.response_store, ctx

    def db(self) -> ResponseStore:
        """The store (404 while the Responses API is off). Its calls block: ``run`` them."""
        if self.store is None or not self.ctx.settings.responses.enabled:
            raise NotFound("the Responses API is off in this deployment")
        return self.store

    @staticmethod
    async def run(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """A store call, off the event loop."""
        return await asyncio.to_thread(fn, *args, **kwargs)

    # Stored responses

    async def stored(self, tenant: str, response_id: str, param: str | None = None):
        found = await self.run(self.db().get, tenant, response_id)
        if found is None:
            raise NotFound(f"No response found with id '{response_id[:64]}'.", param)
        return found

    async def delete(self, tenant: str, response_id: str) -> dict[str, Any]:
        if not await self.run(self.db().delete, tenant, response_id):
            raise NotFound(f"No response found with id '{response_id[:64]}'.")
        return {"id": response_id, "object": "response.deleted", "deleted": True}

    # Creating one

    async def _context(self, tenant: str, body: ResponseCreate) -> list[dict[str, Any]]:
        """The items the new input follows: the previous response's input and output, or the conversation's."""
        if body.previous_response_id and body.conversation_id:
            raise InvalidRequest("previous_response_id and conversation cannot be used together", "conversation")
        if body.previous_response_id:
            prior, prior_input = await self.stored(tenant, body.previous_response_id, "previous_response_id")
            return prior_input + prior["output"]
        if body.conversation_id:
            found = await self.run(self.db().items, tenant, body.conversation_id)
            if found is None:
                raise NotFound(f"No conversation found with id '{body.conversation_id}'.", "conversation")
            return found
        return []

    def _chat_request(self, body: ResponseCreate, model: str | None, messages: list[dict[str, Any]]):
        settings = self.ctx.settings
        cap = settings.ingress.max_tokens
        if body.max_output_tokens is not None and cap is not None and body.max_output_tokens > cap:
            raise InvalidRequest(f"max_output_tokens must be at most {cap}", "max_output_tokens")
        chat: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": body.max_output_tokens,
                                "temperature": body.temperature, "top_p": body.top_p, "user": body.user,
                                "stream": body.stream, **it.chat_tools(body)}
        if body.stream:
            chat["stream_options"] = {"include_usage": True}
        try:
            req = ChatCompletionRequest.model_validate({k: v for k, v in chat.items() if v is not None})
        except ValidationError as exc:
            raise InvalidRequest(f"input: {exc.errors()[0].get('msg', exc)}"[:500], "input") from None
        try:
            check_messages(req, settings)
        except InvalidRequest as exc:  # it names a chat message; the client sent items
            raise InvalidRequest(f"input, as chat messages: {exc.message}", "input") from None
        check_tools(req, settings)
        check_sampling(req, settings)
        return req

    async def create(self, request: Request, body: ResponseCreate):
        store = self.db()
        tenant = tenant_of(request)
        context = await self._context(tenant, body)
        new = it.canonical(body.input)
        it.check_ids(context, new)
        limit = self.ctx.settings.responses.max_context_items
        if body.truncation == "auto" and len(context) + len(new) > limit:
            context = it.truncated(context, limit - len(new))  # the oldest items dropped, as OpenAI's "auto"
        seen = context + new
        if len(seen) > limit:
            raise InvalidRequest(f"this response would carry {len(seen)} items of context and input, more than "
                                 f"{limit} (truncation: auto drops the oldest)", "input")
        model, handle = self.ctx.models.chat_model(body.model, api_key(request))
        req = self._chat_request(body, model, it.chat_messages(seen, body.instructions))
        # A conversation, or a previous_response_id chain from its second turn (the id of its first item, carried
        # in every stored input), is one session: its turns reach the replica whose prefix cache holds their
        # history. A first turn has none yet: the prefix router places it.
        session = session_header(request) or body.conversation_id or (
            f"{tenant}:{seen[0].get('id')}" if body.previous_response_id else None)
        await charge_tokens(request, req.max_tokens or self.ctx.settings.ingress.default_token_charge,
                            "max_output_tokens")
        response_id, created = it.new_id("resp"), int(time.time())
        answer = await start(self.ctx, "chat", req, model, handle, route=ROUTE, session=session)
        if answer.lines is None:
            assert answer.body is not None
            output, finish = it.output_of(answer.body)
            response = it.response_object(response_id, body, model, status="completed", output=output,
                                          usage=it.usage_of(answer.body.get("usage")), finish_reason=finish,
                                          created_at=created)
            await self._keep(store, tenant, body, response, seen, new)
            return JSONResponse(response, headers=answer.headers)
        events = self._events(store, tenant, body, model, response_id, created, answer.lines, seen, new)
        return StreamingResponse(events, media_type="text/event-stream", headers=answer.headers)

    async def _keep(self, store: ResponseStore, tenant: str, body: ResponseCreate, response: dict[str, Any],
                    seen: list[dict[str, Any]], new: list[dict[str, Any]]) -> None:
        """Store an answered response (``store``) and add its input and output to its conversation."""
        if not body.store and not body.conversation_id:
            return
        added = await self.run(store.record, tenant, response, seen if body.store else None, body.conversation_id,
                               new + response["output"])
        if not added:
            raise NotFound(f"No conversation found with id '{body.conversation_id}' (deleted while the response "
                           "was made).", "conversation")
        if not store.due(PRUNE_PERIOD_S):
            return
        try:  # the response is kept: a failed prune must not fail it (the next period tries again)
            await self.run(store.prune_due, self.ctx.settings.responses.retention_s, PRUNE_PERIOD_S)
        except ServiceUnavailable as exc:
            logger.warning("pruning stored responses failed: %s", exc)

    async def _events(self, store: ResponseStore, tenant: str, body: ResponseCreate, model: str, response_id: str,
                      created: int, lines: AsyncGenerator[str, None], seen: list[dict[str, Any]],
                      new: list[dict[str, Any]]) -> AsyncGenerator[str, None]:
        stream = StreamEvents()
        snapshot = it.response_object(response_id, body, model, status="in_progress", output=[], created_at=created)
        yield sse_event(stream.lifecycle("created", snapshot))
        yield sse_event(stream.lifecycle("in_progress", snapshot))
        error: dict[str, Any] | None = None
        try:
            async for line in lines:
                if isinstance(line, ErrorEvent):
                    error = line.body.get("error") or {}
                    break
                if is_done(line):
                    break
                data = data_of(line)
                if data is None:
                    continue
                for event in stream.chunk(json.loads(data)):
                    yield sse_event(event)
        finally:
            await lines.aclose()  # the relay's end now: its span, its canary outcome
        for event in stream.close(failed=error is not None):
            yield sse_event(event)
        if error is None:
            final = it.response_object(response_id, body, model, status="completed", output=stream.output,
                                       usage=it.usage_of(stream.usage), finish_reason=stream.finish_reason,
                                       created_at=created)
            try:
                await self._keep(store, tenant, body, final, seen, new)
            except (NotFound, ServiceUnavailable) as exc:
                error = {"code": "server_error" if isinstance(exc, ServiceUnavailable) else "not_found",
                         "message": str(exc), "param": exc.param}
            else:
                yield sse_event(stream.lifecycle("completed" if final["status"] == "completed" else "incomplete", final))
                return
        yield sse_event(stream.event("error", code=str(error.get("code") or "server_error"),
                                     message=str(error.get("message") or "the response failed"),
                                     param=error.get("param")))
        failed = it.response_object(response_id, body, model, status="failed", output=stream.output,
                                    error={"code": "server_error", "message": str(error.get("message") or "")},
                                    created_at=created)
        yield sse_event(stream.lifecycle("failed", failed))
