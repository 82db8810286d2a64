"""A real two-node Ray cluster on this machine: a head (`ray start --head`) and a worker node that alone
advertises the custom resource `llm`, each with its own raylet. The app is deployed from
configs/cluster.yaml: the LLM replica lands on the worker, every other deployment on the head, and requests
go through the head's HTTP proxy with the unmodified `openai` client. When the worker node stops, the app
reports the LLM unhealthy (503 from /healthz naming the component) and LLM requests get a fast 503 with
Retry-After (never a hang); when a worker node joins again, Serve places the LLM replica on it and the app
serves again without any manual action.

The cluster (tests/cluster/conftest.py) runs the tiny model: this is about placement and recovery, not
content.
"""

import signal
import time

import httpx
import pytest

from tests.cluster.conftest import _tree, _wait, _worker
from tests.names import TINY_LLM as LLM
from tests.procs import stop_tree

pytestmark = pytest.mark.cluster


def test_llm_on_the_worker_lost_with_it_and_back_when_a_worker_joins(cluster):
    import openai

    url, logs = cluster["url"], cluster["logs"]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    health = httpx.get(f"{url}/healthz").json()["components"]
    # Placement: the LLM replica is a process of the worker node, the vector store one of the head.
    assert health[LLM]["pid"] in _tree(cluster["workers"][0]), "the LLM replica is not on the worker node"
    assert health["vector"]["pid"] in _tree(cluster["head"]), "the vector store is not on the head node"
    model = client.models.list().data[0].id
    answer = client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content is not None

    # The worker node goes away (its raylet and every process on it).
    stop_tree(cluster["workers"][0], signal.SIGTERM, 90)
    lost_at = time.monotonic()
    down = _wait("/healthz did not report the LLM unhealthy",
                 lambda: (r := httpx.get(f"{url}/healthz", timeout=30)).status_code == 503 and r.json(), 180, logs)
    assert down["components"][LLM]["status"] == "unhealthy", down
    assert down["components"]["vector"]["status"] == "ok", down
    # LLM requests: a clear 503 with Retry-After, answered at once once the ingress has noticed.
    refused = _wait("chat requests were not refused with a fast 503",
                    lambda: (r := httpx.post(f"{url}/v1/chat/completions", timeout=60, json={
                        "model": model, "max_tokens": 4, "messages": [{"role": "user", "content": "Hi"}]})).status_code == 503
                    and r, 180, logs)
    assert refused.headers["retry-after"] and refused.json()["error"]["code"] == "service_unavailable"
    # Retrieval, on the head, still serves.
    assert httpx.post(f"{url}/v1/search", json={"query": "anything", "top_k": 1}).status_code == 200
    unavailable_s = time.monotonic() - lost_at

    # A worker joins again: no action on the app; Serve places the pending LLM replica on it.
    cluster["workers"].append(_worker(cluster["gcs"], cluster["tmp"], cluster["env"], 2))
    logs.append(cluster["tmp"] / "worker-2.log")
    _wait("the app did not recover", lambda: httpx.get(f"{url}/healthz", timeout=30).status_code == 200, 600, logs)
    assert httpx.get(f"{url}/healthz").json()["components"][LLM]["pid"] in _tree(cluster["workers"][1])
    answer = client.chat.completions.create(model=model, max_tokens=8, messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content is not None
    print(f"LLM unavailable {unavailable_s:.0f}s after the node loss until refused fast; recovered")
