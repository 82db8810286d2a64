"""What each side of a canary reports: the ingress counts requests, errors and times to first token per side
(``ArmStats``) and sends them to the release controller, which judges the canary from them
(serve_app/release/canary.py)."""

from __future__ import annotations

import math
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
