"""Every metric of the app, in one place.

Declared with Ray Serve's metrics API (``ray.serve.metrics``): each replica records into its own process,
and Ray's metrics agent on every node exports them in Prometheus format together with Ray Serve's own
metrics and vLLM's (the LLM engine reports through vLLM's ``RayPrometheusStatLogger``). In that exposition
Ray prefixes every name with ``ray_``, counters get ``_total`` and Serve adds the tags ``deployment``,
``replica`` and ``application``; so ``serve_app_http_requests`` is scraped as
``ray_serve_app_http_requests_total``. ``GET /metrics`` on the ingress relays the exposition of the node it
runs on; a multi-node cluster is scraped on every node (cluster/prometheus/prometheus.yml).

Label values are bounded: route templates (never raw paths), status codes, tool names from the allow-list,
the release label. No label carries request content or ids.
"""

from __future__ import annotations

import functools

# Seconds; from a cached answer to a long agent run.
LATENCY_BUCKETS: list[float] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0]
TTFT_BUCKETS: list[float] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0]
COUNT_BUCKETS: list[float] = [1, 2, 4, 8, 16, 32, 64, 128, 256]
COLD_START_BUCKETS: list[float] = [1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]

# name (as declared; exported with the ray_ prefix) → (type, help, tag keys, buckets)
DEFINITIONS: dict[str, tuple[str, str, tuple[str, ...], list[float] | None]] = {
    # Ingress
    "serve_app_http_requests": ("counter", "HTTP requests answered by the ingress, by route template, method and "
                                "status code.", ("route", "method", "status"), None),
    "serve_app_http_request_duration_seconds": ("histogram", "Time from the request to the last byte of the "
                                                "response (whole stream for SSE), by route template.",
                                                ("route", "method"), LATENCY_BUCKETS),
    "serve_app_rate_limited_requests": ("counter", "Requests refused with 429 by an API key's rate limit, by the "
                                        "limit that was reached (requests, tokens).", ("limit",), None),
    "serve_app_rate_limit_failovers": ("counter", "Times an ingress replica turned to its own rate-limit buckets "
                                       "because the state store did not answer a lease in time.", (), None),
    "serve_app_release_info": ("gauge", "1 for the release the ingress replica serves (label release).",
                               ("release",), None),
    # LLM, as clients see it (the engine's own TTFT, TPOT, tokens and queue are vLLM's metrics)
    "serve_app_llm_time_to_first_token_seconds": ("histogram", "Time from the request reaching the ingress to the "
                                                  "first streamed event of an LLM answer, by route and served model (configured names only).",
                                                  ("route", "model"), TTFT_BUCKETS),
    "serve_app_llm_output_tokens": ("counter", "Completion tokens of non-streamed LLM answers (usage), by route "
                                    "and served model.", ("route", "model"), None),
    "serve_app_llm_prompt_tokens": ("counter", "Prompt tokens of non-streamed LLM answers (usage), by route and "
                                    "served model.", ("route", "model"), None),
    # Models that scale to zero (serve_app/ingress/replicas.py)
    "serve_app_model_replicas": ("gauge", "Running replicas of a model that may scale to zero, as Serve reports "
                                 "them, by served model.", ("model",), None),
    "serve_app_cold_starts": ("counter", "Starts of a model from zero replicas, caused by a client request, by "
                              "served model.", ("model",), None),
    "serve_app_cold_start_seconds": ("histogram", "Time from the request that found a model at zero replicas to "
                                     "its first replica answering, by served model.", ("model",), COLD_START_BUCKETS),
    # Vector tier
    "serve_app_vector_search_duration_seconds": ("histogram", "Search time in the VectorStore replica (embedding "
                                                 "the query and the Qdrant query).", (), LATENCY_BUCKETS),
    "serve_app_vector_search_hits": ("histogram", "Hits returned per search.", (), COUNT_BUCKETS),
    "serve_app_embedder_batch_size": ("histogram", "Texts per embedding forward pass (after Serve's batching).",
                                      (), COUNT_BUCKETS),
    # Agent
    "serve_app_agent_runs": ("counter", "Agent runs by how they ended (final_answer, max_steps, "
                             "deadline, cancelled, error).",
                             ("outcome",), None),
    "serve_app_agent_steps": ("histogram", "Steps per agent run.", (), COUNT_BUCKETS),
    "serve_app_agent_tool_duration_seconds": ("histogram", "Tool call time, by tool.", ("tool",), LATENCY_BUCKETS),
    "serve_app_agent_tool_errors": ("counter", "Tool calls that failed, timed out or were refused, by tool and "
                                    "status.", ("tool", "status"), None),
}


@functools.cache
def metric(name: str):
    """The process's instance of a declared metric (created on first use, inside the replica)."""
    from ray.serve import metrics as serve_metrics

    kind, help_, tags, buckets = DEFINITIONS[name]
    if kind == "counter":
        return serve_metrics.Counter(name, description=help_, tag_keys=tags)
    if kind == "gauge":
        return serve_metrics.Gauge(name, description=help_, tag_keys=tags)
    return serve_metrics.Histogram(name, description=help_, boundaries=buckets, tag_keys=tags)


def exported_name(name: str) -> str:
    """The name a Prometheus scraping Ray's metrics endpoint sees (``_total``/``_bucket`` etc. aside)."""
    return f"ray_{name}"
