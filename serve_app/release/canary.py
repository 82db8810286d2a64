"""Canary releases: a share of one model's traffic goes to the new release's LLM for it, the rest to the
current one, and the release controller promotes or rolls back from what each side did over the window.

The canary LLM runs as its own Serve application (``build_llm``, no HTTP route) next to the running one,
so starting and removing it restarts nothing of the current release. The ingress learns about it through
its ``user_config`` (``canaries: {<served model>: {app, deployment, share, release}}``, applied by
``reconfigure``), picks a side per request of that model (``CanaryRouter.pick``, serve_app/ingress/canary.py), records each outcome and sends its counts
(serve_app/protocol/canary.py) to the release controller every couple of seconds. Requests that fail
validation at the ingress never reach either side and are not counted; every answer from a side that is not
a 2xx counts as an error of that side, since both sides get the same random mix of requests.
"""

from __future__ import annotations

# The report format is the protocol's; CANARY and PRIMARY are re-exported for the controller's bookkeeping.
from serve_app.protocol.canary import CANARY, PRIMARY, ArmStats, percentile

__all__ = ["CANARY", "PRIMARY", "ArmStats", "judge"]


def judge(primary: ArmStats, canary: ArmStats, settings, final: bool) -> tuple[str, str]:
    """Compare the two sides. Returns ("pass" | "fail" | "wait", reason).

    ``settings`` is a CanarySettings. Before the window ends (``final`` False) only a clear failure is
    reported (enough canary requests and an error rate over the bound); at the end the canary passes when
    it saw enough requests, its error rate is at most the current release's plus
    ``max_error_rate_increase``, and its p99 TTFT (streams) is at most ``max_ttft_p99_ratio`` times the
    current release's or ``ttft_slack_ms`` above it, whichever is larger.
    """
    enough = canary.requests >= settings.min_requests
    limit = primary.error_rate + settings.max_error_rate_increase
    if enough and canary.error_rate > limit:
        return "fail", (f"canary error rate {canary.error_rate:.1%} ({canary.errors}/{canary.requests}) above "
                        f"{limit:.1%} (current release {primary.error_rate:.1%} + {settings.max_error_rate_increase:.1%})")
    if not final:
        return "wait", "window still open"
    if not enough:
        return "fail", (f"the canary answered {canary.requests} requests in the window, fewer than "
                        f"min_requests={settings.min_requests}: not enough evidence to promote")
    p_can, p_base = percentile(canary.ttft_ms, 99), percentile(primary.ttft_ms, 99)
    if p_can is not None and p_base is not None:
        bound = max(p_base * settings.max_ttft_p99_ratio, p_base + settings.ttft_slack_ms)
        if p_can > bound:
            return "fail", (f"canary p99 TTFT {p_can:.0f} ms above {bound:.0f} ms (current release {p_base:.0f} ms, "
                            f"×{settings.max_ttft_p99_ratio:g} or +{settings.ttft_slack_ms:g} ms)")
        ttft = f"p99 TTFT {p_can:.0f} ms vs {p_base:.0f} ms"
    else:
        ttft = "no streamed requests, TTFT not compared"
    return "pass", (f"canary error rate {canary.error_rate:.1%} vs {primary.error_rate:.1%} over "
                    f"{canary.requests}/{primary.requests} requests; {ttft}")
