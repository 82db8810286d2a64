"""RAG: the parallel plan, prompt assembly and citations. Pure asyncio over two injected callables (an LLM
client and a search function), so the plan is the same whichever deployment runs it.

Plan (the system's sequence diagram): the raw question is searched while the LLM drafts a short answer
from its own knowledge; both are merged into the final prompt (numbered sources + the draft, which the
model is told to correct from the sources); the answer cites sources by number. The search branch has its
own deadline: past it, or when the vector tier fails, the answer is given without sources and marked
``degraded``. A ``sequential`` plan runs the same steps one after the other (for measurement only).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import RagSettings
from serve_app.errors import AppError, InvalidRequest
from serve_app.llm.client import LLMClient
from serve_app.observability.tracing import span

logger = logging.getLogger("ray.serve")

Search = Callable[[str, int, dict[str, Any] | None], Awaitable[list[dict[str, Any]]]]
_CITATION = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[^\W_]{4,}")
_OVERLAP = 3


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


@dataclass
class Prepared:
    """Outcome of the parallel stage: what the final prompt is built from."""

    question: str
    hits: list[dict[str, Any]]
    draft: str | None
    degraded_reason: str | None
    timings: dict[str, Any]
    started: float
    messages: list[dict[str, str]] = field(default_factory=list)


class RagPipeline:
    def __init__(self, llm: LLMClient, search: Search | None, settings: RagSettings, prompts: PromptSettings):
        self.llm, self.search, self.s, self.p = llm, search, settings, prompts

    # -- the parallel stage ---------------------------------------------------------------------------

    async def _retrieve(self, question: str, top_k: int, filter_: dict | None) -> tuple[list, str | None, float | None]:
        with span("rag.retrieval", top_k=top_k) as s:
            hits, reason, ms = await self._search_hits(question, top_k, filter_)
            s.set_attribute("hits", len(hits))
            if reason is not None:
                s.set_attribute("degraded_reason", reason)
            return hits, reason, ms

    async def _search_hits(self, question: str, top_k: int, filter_: dict | None) -> tuple[list, str | None, float | None]:
        if self.search is None:
            return [], "the retrieval tier is disabled", None
        start = time.perf_counter()
        try:
            hits = await asyncio.wait_for(self.search(question, top_k, filter_), self.s.retrieval_timeout_s)
            return hits, None, _ms(start)
        except asyncio.TimeoutError:
            reason = f"document search did not answer within {self.s.retrieval_timeout_s:g}s"
        except InvalidRequest:
            raise  # the request's own fault (e.g. its filter): an error, not a degradation
        except Exception as exc:  # noqa: BLE001 - any other failure of the vector tier degrades the answer
            reason = f"document search failed: {exc if isinstance(exc, AppError) else type(exc).__name__}"
        logger.warning("RAG answers without retrieval: %s", reason)
        return [], reason, None

    async def _draft(self, question: str) -> tuple[str | None, float | None]:
        if not self.s.draft:
            return None, None
        with span("rag.draft", max_tokens=self.s.draft_max_tokens):
            return await self._draft_text(question)

    async def _draft_text(self, question: str) -> tuple[str | None, float | None]:
        start = time.perf_counter()
        messages = [
            {"role": "system", "content": self.p.rag_draft_system},
            {"role": "user", "content": self.p.rag_draft_user.format(question=question)},
        ]
        text = await self.llm.complete(messages, self.s.draft_max_tokens, self.s.temperature)
        return text.strip(), _ms(start)

    async def prepare(self, question: str, top_k: int, filter_: dict | None, plan: str = "parallel") -> Prepared:
        # Both branches run as tasks created inside this span, so theirs are its children.
        with span("rag.prepare", plan=plan):
            return await self._prepare(question, top_k, filter_, plan)

    async def _prepare(self, question: str, top_k: int, filter_: dict | None, plan: str) -> Prepared:
        started = time.perf_counter()
        if plan == "parallel":
            retrieval = asyncio.ensure_future(self._retrieve(question, top_k, filter_))
            draft = asyncio.ensure_future(self._draft(question))
            try:
                (hits, reason, retrieval_ms), (text, draft_ms) = await asyncio.gather(retrieval, draft)
            finally:
                # One branch failed (or the caller was cancelled): the other one's work is dropped.
                retrieval.cancel()
                draft.cancel()
        else:
            hits, reason, retrieval_ms = await self._retrieve(question, top_k, filter_)
            text, draft_ms = await self._draft(question)
        timings = {"retrieval_ms": retrieval_ms, "draft_ms": draft_ms, "parallel_ms": _ms(started)}
        prepared = Prepared(question, self._budget(hits), text, reason, timings, started)
        prepared.messages = self._messages(prepared)
        return prepared

    # -- merging ------------------------------------------------------------------------------------

    def _budget(self, hits: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Best hits first, each chunk once, cut to the context budget."""
        out, seen, left = [], set(), self.s.max_context_chars
        for h in hits:
            if h["chunk_id"] in seen or left <= 0:
                continue
            seen.add(h["chunk_id"])
            text = h["text"][:left]
            left -= len(text)
            out.append({**h, "text": text})
        return out

    def _messages(self, prep: Prepared) -> list[dict[str, str]]:
        if prep.hits:
            sources = "\n".join(
                self.p.rag_source.format(n=i, text=h["text"], document_id=h["document_id"])
                for i, h in enumerate(prep.hits, 1)
            )
        else:
            sources = self.p.rag_no_sources
        # Without sources the draft adds nothing the answer will not say itself: leave it out.
        draft = self.p.rag_draft.format(draft=prep.draft) if prep.draft and prep.hits else ""
        return [
            {"role": "system", "content": self.p.rag_answer_system},
            {"role": "user", "content": self.p.rag_answer_user.format(sources=sources, draft=draft, question=prep.question)},
        ]

    def sources(self, prep: Prepared, answer: str) -> list[dict[str, Any]]:
        """Every source in the prompt, with whether the answer cites it: by its [n] marker, or — for models
        too small to write markers — by sharing at least ``_OVERLAP`` distinct content words with it that the
        question does not contain."""
        marked = {int(n) for n in _CITATION.findall(answer)}
        words = _content_words(answer) - _content_words(prep.question)  # echoing the question proves nothing
        out = []
        for i, h in enumerate(prep.hits, 1):
            if i in marked:
                by = "marker"
            elif len(words & _content_words(h["text"])) >= _OVERLAP:
                by = "overlap"
            else:
                by = None
            out.append({"index": i, "document_id": h["document_id"], "chunk_id": h["chunk_id"], "score": h["score"],
                        "cited": by is not None, "cited_by": by})
        return out

    def finish(self, prep: Prepared, answer: str, answer_ms: float, ttft_ms: float | None) -> dict[str, Any]:
        t = prep.timings
        return {
            "answer": answer,
            "sources": self.sources(prep, answer),
            "timings": {
                **t,
                "llm_ms": round((t["draft_ms"] or 0) + answer_ms, 2),
                "ttft_ms": ttft_ms,
                "total_ms": _ms(prep.started),
            },
            "degraded": prep.degraded_reason is not None,
            "degraded_reason": prep.degraded_reason,
            "prompts_version": self.p.version,
        }

    # -- the final generation -----------------------------------------------------------------------

    async def answer(self, prep: Prepared, max_tokens: int) -> dict[str, Any]:
        start = time.perf_counter()
        with span("rag.answer", max_tokens=max_tokens, stream=False, sources=len(prep.hits)):
            text = await self.llm.complete(prep.messages, max_tokens, self.s.temperature)
        return self.finish(prep, text.strip(), _ms(start), None)

    async def open_stream(self, prep: Prepared, max_tokens: int) -> AsyncIterator[dict[str, Any]]:
        """Start the answer stream (errors before its first token raise here) and return its events:
        sources first, then tokens, then a final event with the timings."""
        start = time.perf_counter()
        with span("rag.answer", max_tokens=max_tokens, stream=True, sources=len(prep.hits)):
            deltas = await self.llm.stream(prep.messages, max_tokens, self.s.temperature)
        return self._events(prep, deltas, start)

    async def _events(self, prep: Prepared, deltas: AsyncIterator[str], start: float) -> AsyncIterator[dict[str, Any]]:
        yield {"type": "sources", "sources": self.sources(prep, ""), "degraded": prep.degraded_reason is not None}
        parts: list[str] = []
        ttft = None
        try:
            async for text in deltas:
                if ttft is None:
                    ttft = _ms(prep.started)
                parts.append(text)
                yield {"type": "token", "text": text}
        finally:
            await deltas.aclose()  # abandoned by the client: abort the generation now, not at GC
        final = self.finish(prep, "".join(parts).strip(), _ms(start), ttft)
        yield {"type": "done", **{k: v for k, v in final.items() if k != "answer"}}
