"""T3: a slow or dead vector store. Frozen (SIGSTOP of the store's replica: it accepts calls and never
answers) and killed (SIGKILL: Serve replaces it). Pass: RAG answers without retrieval, marked degraded with
the reason; the agent's search tool returns an error observation and the agent still finishes; chat is
unaffected; no 5xx; once the store is back, RAG answers with sources again. The time a degraded RAG answer
took (retrieval timeout + the LLM's answer) goes to the reliability report."""

import os
import signal
import time

import pytest

from tests.polling import wait_healthy

pytestmark = pytest.mark.chaos

DOCS = [{"id": "t3-paris", "text": "Paris is the capital of France. The Eiffel Tower is 330 metres tall."}]
QUESTION = {"question": "What is the capital of France?", "max_tokens": 8}


def _store_pid(http):
    return http.get("/healthz").json()["components"]["vector"]["pid"]


def _chat(http, model_name):
    return http.post("/v1/chat/completions", json={"model": model_name, "max_tokens": 8,
                                                     "messages": [{"role": "user", "content": "Hi"}]})


def test_t3_frozen_vector_store_degrades_rag_and_agent_not_chat(http, model_name, reliability):
    wait_healthy(http)
    assert http.post("/v1/documents", json={"documents": DOCS}).status_code == 200
    pid = _store_pid(http)
    os.kill(pid, signal.SIGSTOP)
    try:
        t = time.perf_counter()
        r = http.post("/v1/rag", json=QUESTION)
        rag_s = time.perf_counter() - t
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["degraded"] is True and body["sources"] == [] and "did not answer" in body["degraded_reason"]
        assert body["timings"]["retrieval_ms"] is None

        r = http.post("/v1/agent", json={"task": "Use search_documents to find the capital of France.", "max_steps": 2})
        assert r.status_code == 200, r.text
        steps = r.json()["steps"]
        searches = [s for s in steps if s["tool"] in ("search_documents", "get_document")]
        assert all(s["status"] == "error" and "did not answer" in s["output"] for s in searches)
        assert steps[-1]["tool"] == "final_answer"

        assert _chat(http, model_name).status_code == 200
    finally:
        os.kill(pid, signal.SIGCONT)
    reliability.record("T3", "vector store frozen (SIGSTOP)", rag_status=200, rag_degraded=True,
                       degraded_rag_answer_s=round(rag_s, 2), agent_status=200, chat_status=200)
    r = http.post("/v1/rag", json=QUESTION)
    assert r.status_code == 200 and r.json()["degraded"] is False


def test_t3_killed_vector_store_degrades_rag_until_replaced(http, model_name, reliability):
    wait_healthy(http)
    pid = _store_pid(http)
    os.kill(pid, signal.SIGKILL)
    killed_at = time.time()
    answers = []
    # While Serve notices and replaces the store: RAG and chat keep answering, RAG marked degraded.
    for _ in range(6):
        t = time.perf_counter()
        r = http.post("/v1/rag", json=QUESTION)
        answers.append({"status": r.status_code, "s": time.perf_counter() - t,
                        "degraded": r.json().get("degraded") if r.status_code == 200 else None})
        assert _chat(http, model_name).status_code == 200
    wait_healthy(http)
    back_s = time.time() - killed_at
    after = http.post("/v1/rag", json=QUESTION)
    reliability.record("T3", "vector store killed (SIGKILL)", rag_requests=len(answers),
                       rag_statuses=sorted({a["status"] for a in answers}),
                       rag_degraded=sum(bool(a["degraded"]) for a in answers),
                       degraded_rag_answer_max_s=round(max(a["s"] for a in answers if a["degraded"]), 2)
                       if any(a["degraded"] for a in answers) else None,
                       store_replaced_within_s=round(back_s, 1))
    assert all(a["status"] == 200 for a in answers), answers
    assert answers[0]["degraded"], answers
    assert _store_pid(http) != pid
    assert after.status_code == 200 and after.json()["degraded"] is False and after.json()["sources"]
