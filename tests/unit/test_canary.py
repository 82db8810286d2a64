"""Canary routing and judgement (serve_app/release/canary.py), and the canary application's config."""

import random

import pytest

from serve_app.config.loader import LLM_IMPORT_PATH, ConfigError, validate_serve_config
from serve_app.config.settings import CanarySettings
from serve_app.ingress.canary import CanaryRouter
from serve_app.protocol.canary import CANARY, PRIMARY, ArmStats, percentile
from serve_app.release.canary import judge
from tests.names import DEPLOYMENT

pytestmark = pytest.mark.unit

S = CanarySettings(min_requests=10, max_error_rate_increase=0.02, max_ttft_p99_ratio=2.0, ttft_slack_ms=100)


def arm(requests, errors=0, ttft=()):
    return ArmStats(requests=requests, errors=errors, ttft_ms=list(ttft))


def test_percentile_is_nearest_rank():
    assert percentile([], 99) is None
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(range(1, 101)), 99) == 99
    assert percentile(list(range(1, 11)), 50) == 5
    assert percentile([3.0, 1.0, 2.0], 99) == 3.0


def test_a_canary_as_good_as_the_current_release_passes():
    verdict, reason = judge(arm(100, 1, [100] * 50), arm(20, 0, [120] * 10), S, final=True)
    assert verdict == "pass", reason


def test_more_errors_fail_as_soon_as_there_are_enough_requests():
    assert judge(arm(100, 0), arm(5, 5), S, final=False)[0] == "wait"  # not enough evidence yet
    verdict, reason = judge(arm(100, 0), arm(10, 1), S, final=False)
    assert verdict == "fail" and "error rate 10.0%" in reason
    # Within the allowed increase over the current release's own rate.
    assert judge(arm(100, 10), arm(50, 5), S, final=True)[0] == "pass"


def test_too_few_canary_requests_is_not_promoted():
    verdict, reason = judge(arm(100), arm(9), S, final=True)
    assert verdict == "fail" and "min_requests" in reason


def test_slower_first_tokens_fail_against_ratio_and_slack():
    base = [200.0] * 50
    assert judge(arm(100, 0, base), arm(20, 0, [390.0] * 20), S, final=True)[0] == "pass"
    verdict, reason = judge(arm(100, 0, base), arm(20, 0, [200.0] * 19 + [900.0]), S, final=True)
    assert verdict == "fail" and "p99 TTFT 900 ms" in reason
    # Small TTFTs: the absolute slack applies (30 → 120 ms is 4× but within +100 ms).
    assert judge(arm(100, 0, [30.0] * 50), arm(20, 0, [120.0] * 20), S, final=True)[0] == "pass"
    # No streams on one side: decided on errors only, and said so.
    verdict, reason = judge(arm(100), arm(20), S, final=True)
    assert verdict == "pass" and "not compared" in reason


def test_router_sends_about_the_share_and_counts_per_side():
    router = CanaryRouter("old", "new", share=0.25, release=7, rng=random.Random(0))
    picks = [router.pick() for _ in range(4000)]
    share = sum(1 for a, _ in picks if a == CANARY) / len(picks)
    assert 0.22 < share < 0.28
    assert {h for a, h in picks if a == CANARY} == {"new"} and {h for a, h in picks if a == PRIMARY} == {"old"}
    assert router.flush() is None
    router.record(CANARY, ok=False)
    router.record(CANARY, ok=True, ttft_ms=12.5)
    router.record(PRIMARY, ok=True)
    out = router.flush()
    assert out == {PRIMARY: {"requests": 1, "errors": 0, "ttft_ms": []},
                   CANARY: {"requests": 2, "errors": 1, "ttft_ms": [12.5]}}
    assert router.flush() is None  # reset after a flush
    total = ArmStats()
    total.add(out[CANARY])
    total.add(out[CANARY])
    assert total.summary()["requests"] == 4 and total.summary()["error_rate"] == 0.5


def _config(extra_app):
    return {"applications": [{"name": "serve_app", "route_prefix": "/", "import_path": "serve_app.app:build_app",
                              "args": {"vector": {"enabled": False}}}, extra_app]}


def test_the_canary_application_is_validated_like_the_app():
    canary = {"name": "serve_app-canary", "route_prefix": None, "import_path": LLM_IMPORT_PATH,
              "args": {"engine": {"max_num_seqs": 8}, "deployment": DEPLOYMENT},
              "deployments": [{"name": DEPLOYMENT, "num_replicas": 1}]}
    validate_serve_config(_config(canary))
    with pytest.raises(ConfigError, match=r"applications\[1\].args.engine.max_num_seqs"):
        validate_serve_config(_config({**canary, "args": {"engine": {"max_num_seqs": 0}, "deployment": DEPLOYMENT}}))
    with pytest.raises(ConfigError, match=f"only the deployment '{DEPLOYMENT}'"):
        validate_serve_config(_config({**canary, "deployments": [{"name": "Ingress"}]}))
    with pytest.raises(ConfigError, match="model.enabled"):
        validate_serve_config(_config({**canary, "args": {"model": {"enabled": False}, "deployment": DEPLOYMENT}}))


def test_canary_settings_are_bounded():
    with pytest.raises(ValueError):
        CanarySettings(share=1.0)
    with pytest.raises(ValueError):
        CanarySettings(share=0)
    with pytest.raises(ValueError):
        CanarySettings(max_ttft_p99_ratio=0.5)


def test_the_ingress_splits_each_models_traffic_by_its_own_canary_only():
    """ReleaseSide (serve_app/ingress/releases.py): one router per model with a canary out, found by the
    model's own handle; a model without a canary has none; a router is kept while its canary is unchanged."""
    from serve_app.ingress.releases import ReleaseSide

    first, second = object(), object()
    side = ReleaseSide("1", {"a": first, "b": second}, report_period_s=2.0)
    made = []

    def canary_handle(deployment, app):
        made.append((deployment, app))
        return f"canary of {deployment}"

    canaries = {"b": {"app": "serve_app-LLMServer-b-canary", "deployment": "LLMServer-b", "share": 0.5, "release": 9},
                "gone": {"app": "x", "deployment": "y", "share": 0.5, "release": 3}}  # a model not served here
    side.set_canaries(canaries, canary_handle)
    assert side.router_for(first) is None
    router = side.router_for(second)
    assert router is not None and router.release == 9 and router.handles[CANARY] == "canary of LLMServer-b"
    assert set(side.routers) == {"b"} and made == [("LLMServer-b", "serve_app-LLMServer-b-canary")]
    side.set_canaries(canaries, canary_handle)  # the same canary again (another release's apply)
    assert side.router_for(second) is router and len(made) == 1
    side.set_canaries(None, canary_handle)
    assert side.router_for(second) is None and side.routers == {}
