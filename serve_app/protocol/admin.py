"""Admin API request models: releases, rollback, scale, LoRA adapters."""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from serve_app.config.names import SERVED_NAME_PATTERN


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Scoped(_Request):
    model: str | None = Field(None, min_length=1, max_length=128, description="Scope the release to this served model "
                              "(its engine, source, replicas, autoscaling, LoRA): nothing else may change.")
    component: Literal["retrieval", "agent", "ingress"] | None = Field(
        None, description="Scope the release to this component: nothing else may change.")

    @model_validator(mode="after")
    def _one_scope(self) -> Self:
        if self.model is not None and self.component is not None:
            raise ValueError("scope a release to a model or to a component, not both")
        return self


class DeployRequest(_Scoped):
    config: dict[str, Any] = Field(..., description="A Serve config (the format of configs/*.yaml) holding the app.")
    note: str | None = Field(None, max_length=500, description="Why; stored in the history.")
    canary: dict[str, Any] | None = Field(
        None, description="Deploy as a canary first: {} for the release's own releases.canary settings, or "
        "overrides of them (share, window_s, min_requests, max_error_rate_increase, max_ttft_p99_ratio, ttft_slack_ms)."
    )


class RollbackRequest(_Scoped):
    release: int | None = Field(None, ge=1, description="Release to go back to (default: the previous good one; with "
                                "a scope, the one before the scope's last change).")


class ScaleRequest(_Request):
    deployment: str = Field(..., min_length=1, max_length=64)
    replicas: int | None = Field(None, ge=0, le=1000, description="Fixed replica count (autoscaling off).")
    factor: float | None = Field(None, gt=0, le=100, description="Multiply replicas or autoscaling bounds.")

    @model_validator(mode="after")
    def _one(self) -> ScaleRequest:
        if (self.replicas is None) == (self.factor is None):
            raise ValueError("give exactly one of replicas or factor")
        return self


class AdapterLoadRequest(_Request):
    name: str = Field(..., pattern=SERVED_NAME_PATTERN, description="What requests put in 'model' to use it.")
    path: str = Field(..., min_length=1, max_length=512, description="Its folder, relative to the model's "
                      "adapter root (lora.root).")
    model: str | None = Field(None, max_length=128, description="Served name of the base model (default: the "
                              "first model).")
