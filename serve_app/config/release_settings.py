"""How releases are judged: the watch after a rollout and a canary's window (``releases`` of the settings)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

from serve_app.config.base import Strict as _Strict


class CanarySettings(_Strict):
    """How a release deployed as a canary is judged (POST /admin/releases with ``canary``)."""

    share: float = Field(default=0.1, gt=0, lt=1, description="Share of LLM requests (chat, completions) sent to the "
                         "canary's LLM; the rest go to the current release.")
    window_s: float = Field(default=60.0, gt=0, le=86400, description="How long both sides are compared before the "
                            "canary is promoted or rolled back.")
    min_requests: int = Field(default=20, ge=1, le=1_000_000, description="Requests the canary must answer in the "
                              "window; fewer is not enough evidence and the canary is rolled back.")
    max_error_rate_increase: float = Field(default=0.02, ge=0, le=1, description="Largest allowed excess of the "
                                           "canary's error rate over the current release's (0.02 = 2 points).")
    max_ttft_p99_ratio: float = Field(default=2.0, ge=1, le=100, description="Largest allowed canary p99 TTFT as a "
                                      "multiple of the current release's (streamed requests)...")
    ttft_slack_ms: float = Field(default=250.0, ge=0, le=600_000, description="...or this much above it, whichever is "
                                 "larger (small p99s on a busy CPU vary by more than any ratio).")


class ReleaseSettings(_Strict):
    """How the release controller judges a deploy of these settings (POST /admin/releases)."""

    ready_timeout_s: float = Field(
        default=240.0, gt=0, le=3600, description="A release not RUNNING and healthy within this is rolled back."
    )
    watch_s: float = Field(default=10.0, ge=0, le=3600, description="After RUNNING, every component's health is "
                           "probed this long; a failure rolls the release back.")
    health_failures: int = Field(default=2, ge=1, le=100, description="Consecutive failed probes of one component that "
                                 "count as a failed release (one may be a transient hiccup).")
    startup_failures: int = Field(default=1, ge=1, le=100, description="Replicas of the new release that may fail to "
                                  "start before it is rolled back (Serve itself retries much longer).")
    canary_report_period_s: float = Field(
        default=2.0, gt=0, le=60, description="How often each Ingress replica sends both sides' counts to the release "
        "controller while a canary is out (a verdict can come no sooner). The running config's: not a canary's own.")
    canary: CanarySettings = Field(default_factory=CanarySettings, description="Canary share, window and the "
                                   "bounds it is judged by.")
    audit_max_rows: int = Field(default=100_000, ge=100, le=100_000_000, description="Admin audit records kept (the "
                                "oldest go first); every admin call is recorded, unauthenticated ones too.")
    audit_max_age_days: float = Field(
        default=365.0, gt=0, le=36500, description="Admin audit records older than this go."
    )
    allow_code_changes: bool = Field(default=False, description="Let releases (POST /admin/releases, rollbacks) change "
                                     "code: engine factories, any vLLM flag, chat templates, runtime_env beyond "
                                     "plain environment variables, import paths. Off: whoever holds the admin key "
                                     "changes data only (serve_app/release/guard.py). Read from the running "
                                     "config, and a release cannot change it unless it is on.")
    engine_factories: list[Annotated[str, StringConstraints(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")]] = Field(
        default_factory=list, max_length=64, description="Engine factories ('module:callable') a release may "
        "select as engine.factory while code changes are off: registered by whoever deploys the config file.")
