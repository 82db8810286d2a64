"""Canary releases: a share of LLM traffic goes to the new release's LLM, the rest to the current one, and
the release controller promotes or rolls back from what each side did over the window.

The canary LLM runs as its own Serve application (``build_llm``, no HTTP route) next to the running one,
so starting and removing it restarts nothing of the current release. The ingress learns about it through
its ``user_config`` (``canary: {app, share, release}``, applied by ``reconfigure``), picks a side per
request (``CanaryRouter.pick``), records each outcome and sends its counts to the release controller every
couple of seconds. Requests that fail validation at the ingress never reach either side and are not counted;
every answer from a side that is not a 2xx counts as an error of that side, since both sides get the same
random mix of requests.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

PRIMARY, CANARY = "primary", "canary"


@dataclass
class ArmStats:
    requests: int = 0
    errors: int = 0
    ttft_ms: list[float] = field(default_factory=list)

    def add(self, other: dict[str, Any]) -> None:
        self.requests += int(other.get("requests", 0))
        self.errors += int(other.get("errors", 0))
        self.ttft_ms.extend(float(x) for x in other.get("ttft_ms", ()))

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "ttft_ms": list(self.ttft_ms)}

    def summary(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors,
                "error_rate": round(self.error_rate, 4) if self.requests else None,
                "ttft_p50_ms": _round(percentile(self.ttft_ms, 50)), "ttft_p99_ms": _round(percentile(self.ttft_ms, 99)),
                "ttft_samples": len(self.ttft_ms)}

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 1)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (no interpolation: with few samples p99 is the worst one)."""
    if not values:
        return None
    ordered = sorted(values)
    k = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return ordered[k]


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


class CanaryRouter:
    """The ingress side: which LLM handle serves a request, and the per-side counts since the last flush."""

    def __init__(self, primary, canary, share: float, release: int, rng: random.Random | None = None):
        self.handles = {PRIMARY: primary, CANARY: canary}
        self.share, self.release = share, release
        self._rng = rng or random.Random()
        self._stats = {PRIMARY: ArmStats(), CANARY: ArmStats()}

    def pick(self) -> tuple[str, Any]:
        arm = CANARY if self._rng.random() < self.share else PRIMARY
        return arm, self.handles[arm]

    def record(self, arm: str, ok: bool, ttft_ms: float | None = None) -> None:
        s = self._stats[arm]
        s.requests += 1
        s.errors += 0 if ok else 1
        if ttft_ms is not None:
            s.ttft_ms.append(ttft_ms)

    def flush(self) -> dict[str, dict[str, Any]] | None:
        """The counts since the last flush (None when nothing happened), reset."""
        if not any(s.requests for s in self._stats.values()):
            return None
        out = {arm: s.as_dict() for arm, s in self._stats.items()}
        self._stats = {PRIMARY: ArmStats(), CANARY: ArmStats()}
        return out
