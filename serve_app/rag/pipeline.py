"""RAG: retrieval, prompt assembly and citations. Pure asyncio over two injected callables (an LLM client and a
search function), so the plan is the same whichever deployment runs it.

Plan: the question is searched inside the app (one call to the vector tier, which embeds it in-process and runs
dense and keyword retrieval as one Qdrant query), then the answer is streamed from a prompt whose stable part
(system prompt, the start of the user turn) comes first, so vLLM's prefix cache holds it across requests. No
client round trip sits between the search and the generation, and sources are merged per document: chunks of
one document that follow each other are one source, their shared overlap written once (fewer prompt tokens: a
faster prefill and decode). The search has its own deadline: past it, or when the vector tier fails, the answer
is given without sources and marked ``degraded``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from serve_app.config.prompts import PromptSettings
from serve_app.config.settings import RagSettings
from serve_app.errors import AppError, Conflict, InvalidRequest
from serve_app.llm.client import LLMClient
from serve_app.observability.tracing import span
from serve_app.protocol.retrieval import SearchHit, SearchMode
from serve_app.vector.documents import rejoin

logger = logging.getLogger("ray.serve")

# (question, top_k, filter, mode) -> hits as /v1/search returns them.
Search = Callable[[str, int, dict[str, Any] | None, SearchMode | None, str], Awaitable[list[SearchHit]]]
_CITATION = re.compile(r"\[(\d{1,3})\]")
_WORD = re.compile(r"[^\W_]{4,}")
_OVERLAP = 3


def _content_words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)}


def _ms(start: float) -> float:
    return round((time.perf_counter() - start) * 1000, 2)


@dataclass(frozen=True)
class Source:
    """One source of an answer: a run of consecutive chunks of one document among the hits (``merge_hits``)."""

    document_id: str
    chunk_id: str  # its best-scoring chunk
    chunk_ids: list[str]  # its chunks, in position order
    text: str  # its chunks rejoined
    score: float  # its best chunk's
    page: int | None = None  # its best chunk's place in its file (a PDF's page, a heading path)
    section: str | None = None


@dataclass
class Prepared:
    """Outcome of retrieval: what the prompt is built from."""

    question: str
    hits: list[Source]  # best first
    degraded_reason: str | None
    timings: dict[str, Any]
    started: float
    mode: SearchMode | None = None
    messages: list[dict[str, str]] = field(default_factory=list)
    usage: dict[str, Any] = field(default_factory=dict)  # the answer's token counts, once generated


class RagPipeline:
    def __init__(self, llm: LLMClient, search: Search | None, settings: RagSettings, prompts: PromptSettings):
        self.llm, self.search, self.s, self.p = llm, search, settings, prompts

    # -- retrieval ----------------------------------------------------------------------------------

    async def _retrieve(self, question: str, top_k: int, filter_: dict | None,
                        mode: SearchMode | None, tenant: str) -> tuple[list[SearchHit], str | None, float | None]:
        with span("rag.retrieval", top_k=top_k, mode=mode or "default") as s:
            hits, reason, ms = await self._search_hits(question, top_k, filter_, mode, tenant)
            s.set_attribute("hits", len(hits))
            if reason is not None:
                s.set_attribute("degraded_reason", reason)
            return hits, reason, ms

    async def _search_hits(self, question: str, top_k: int, filter_: dict | None, mode: SearchMode | None,
                           tenant: str) -> tuple[list[SearchHit], str | None, float | None]:
        if self.search is None:
            return [], "the retrieval tier is disabled", None
        start = time.perf_counter()
        try:
            hits = await asyncio.wait_for(self.search(question, top_k, filter_, mode, tenant),
                                          self.s.retrieval_timeout_s)
            return hits, None, _ms(start)
        except TimeoutError:
            reason = f"document search did not answer within {self.s.retrieval_timeout_s:g}s"
        except (InvalidRequest, Conflict):
            # The request's own fault (its filter, a stop-words-only keyword query, a keyword search of a collection
            # without its keyword index): an error, not a degradation.
            raise
        except Exception as exc:  # noqa: BLE001 - any other failure of the vector tier degrades the answer
            reason = f"document search failed: {exc if isinstance(exc, AppError) else type(exc).__name__}"
        logger.warning("RAG answers without retrieval: %s", reason)
        return [], reason, None

    async def prepare(self, question: str, top_k: int, filter_: dict | None,
                      mode: SearchMode | None = None, tenant: str = "") -> Prepared:
        """Retrieval for ``question`` among the tenant's documents (the API key's; "" while keys are off)."""
        with span("rag.prepare", mode=mode or "default"):
            started = time.perf_counter()
            hits, reason, retrieval_ms = await self._retrieve(question, top_k, filter_, mode, tenant)
            sources = self.sources_of(hits)
            return Prepared(question, sources, reason, {"retrieval_ms": retrieval_ms}, started, mode,
                            self.messages(question, sources))

    # -- merging and the prompt (public: a client-side pipeline can build the very same prompt) ---------

    def sources_of(self, hits: list[SearchHit]) -> list[Source]:
        """The prompt's sources from search hits: merged per document (``merge_hits``), cut to the budget."""
        return self._budget(merge_hits(hits))

    def _budget(self, sources: list[Source]) -> list[Source]:
        """Best sources first, cut to the context budget."""
        out, left = [], self.s.max_context_chars
        for h in sources:
            if left <= 0:
                break
            text = h.text[:left]
            left -= len(text)
            out.append(replace(h, text=text))
        return out

    def messages(self, question: str, sources: list[Source]) -> list[dict[str, str]]:
        """The answer's chat messages: the stable part (system prompt, the start of the user turn) first."""
        if sources:
            listed = "\n".join(
                self.p.rag_source.format(n=i, text=h.text, document_id=h.document_id)
                for i, h in enumerate(sources, 1)
            )
        else:
            listed = self.p.rag_no_sources
        return [
            {"role": "system", "content": self.p.rag_answer_system},
            {"role": "user", "content": self.p.rag_answer_user.format(sources=listed, question=question)},
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
            elif len(words & _content_words(h.text)) >= _OVERLAP:
                by = "overlap"
            else:
                by = None
            out.append({"index": i, "document_id": h.document_id, "chunk_id": h.chunk_id,
                        "chunk_ids": list(h.chunk_ids), "page": h.page, "section": h.section, "score": h.score,
                        "cited": by is not None, "cited_by": by})
        return out

    def finish(self, prep: Prepared, answer: str, answer_ms: float, ttft_ms: float | None) -> dict[str, Any]:
        t = prep.timings
        return {
            "answer": answer,
            "sources": self.sources(prep, answer),
            "timings": {**t, "llm_ms": answer_ms, "ttft_ms": ttft_ms, "total_ms": _ms(prep.started)},
            "degraded": prep.degraded_reason is not None,
            "degraded_reason": prep.degraded_reason,
            "prompts_version": self.p.version,
            "mode": prep.mode,
            "usage": _usage(prep.usage),
        }

    # -- the final generation -----------------------------------------------------------------------

    async def answer(self, prep: Prepared, max_tokens: int, **options: Any) -> dict[str, Any]:
        """The whole answer. ``options``: more of vLLM's sampling fields (``min_tokens``, ``ignore_eos``)."""
        start = time.perf_counter()
        with span("rag.answer", max_tokens=max_tokens, stream=False, sources=len(prep.hits)):
            text = await self.llm.complete(prep.messages, max_tokens, self.s.temperature, usage=prep.usage, **options)
        return self.finish(prep, text.strip(), _ms(start), None)

    async def open_stream(self, prep: Prepared, max_tokens: int, **options: Any) -> AsyncGenerator[dict[str, Any], None]:
        """Start the answer stream (errors before its first token raise here) and return its events:
        sources first, then tokens, then a final event with the timings and token counts."""
        start = time.perf_counter()
        with span("rag.answer", max_tokens=max_tokens, stream=True, sources=len(prep.hits)):
            deltas = await self.llm.stream(prep.messages, max_tokens, self.s.temperature, usage=prep.usage, **options)
        return self._events(prep, deltas, start)

    async def _events(self, prep: Prepared, deltas: AsyncIterator[str],
                      start: float) -> AsyncGenerator[dict[str, Any], None]:
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
            # Abandoned by the client: abort the generation now, not at GC. (LLMClient.stream returns an async
            # generator, annotated as the iterator it is used as.)
            if isinstance(deltas, AsyncGenerator):
                await deltas.aclose()
        final = self.finish(prep, "".join(parts).strip(), _ms(start), ttft)
        yield {"type": "done", **{k: v for k, v in final.items() if k != "answer"}}


def _usage(counts: dict[str, Any]) -> dict[str, int] | None:
    """The answer's token counts as OpenAI names them (None when the engine reported none)."""
    if not counts:
        return None
    return {k: int(counts.get(k) or 0) for k in ("prompt_tokens", "completion_tokens", "total_tokens")}


def merge_hits(hits: list[SearchHit]) -> list[Source]:
    """One source per run of consecutive chunks of a document among the hits, best run first. A run's text is its
    chunks rejoined in position order (consecutive chunks overlap: the overlap is written once), its score and
    ``chunk_id`` its best chunk's. A chunk among the hits twice counts once, as its first hit (hits come best
    first)."""
    by_doc: dict[str, list[SearchHit]] = {}
    seen: set[str] = set()
    for h in hits:
        if h.chunk_id not in seen:
            seen.add(h.chunk_id)
            by_doc.setdefault(h.document_id, []).append(h)
    runs: list[list[SearchHit]] = []
    for doc_hits in by_doc.values():
        for h in sorted(doc_hits, key=lambda h: h.position):
            last = runs[-1][-1] if runs else None
            if last is not None and last.document_id == h.document_id and h.position == last.position + 1:
                runs[-1].append(h)
            else:
                runs.append([h])
    sources = []
    for run in runs:
        best = max(run, key=lambda h: h.score)
        sources.append(Source(best.document_id, best.chunk_id, [h.chunk_id for h in run],
                              rejoin([h.text for h in run]), best.score, best.page, best.section))
    return sorted(sources, key=lambda s: -s.score)
