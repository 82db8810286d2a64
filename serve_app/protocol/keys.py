"""An API key's entry: who it belongs to, what it may do, its limits. The same shape in the key file, the state
store (serve_app/state/keys.py) and every ingress replica's key book; the key itself is never kept, only its
SHA-256."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

NAME_PATTERN = r"^[A-Za-z0-9_.@-]+$"
Scope = Literal["public", "admin"]


class KeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., min_length=1, max_length=64, pattern=NAME_PATTERN,
                      description="Who the key belongs to (audit and logs; never the key).")
    sha256: str = Field(..., pattern=r"^[0-9a-f]{64}$", description="SHA-256 of the key, hex.")
    tenant: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN,
                               description="Whose models, state and documents the key reaches; None: its name.")
    scopes: list[Scope] = Field(["public"], description="'admin' also opens /admin/*.")
    requests_per_minute: float | None = Field(None, gt=0, description="Request rate limit (None: unlimited).")
    tokens_per_minute: float | None = Field(None, gt=0, description="Token rate limit (None: unlimited).")
    models: list[str] | None = Field(
        None, min_length=1, description="Served model names (chat and embedding) the key may use; None: every one. "
        "Others get the same 404 as an unknown model and are not listed by /v1/models.")

    @property
    def owner(self) -> str:
        """The key's tenant (its name when none is set)."""
        return self.tenant or self.name


class _KeyFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tenant: str | None = Field(default=None, min_length=1, max_length=64, pattern=NAME_PATTERN)
    scopes: list[Scope] | None = Field(default=None, min_length=1)
    models: list[str] | None = Field(default=None, min_length=1)
    requests_per_minute: float | None = Field(default=None, gt=0)
    tokens_per_minute: float | None = Field(default=None, gt=0)


class KeyCreateRequest(_KeyFields):
    """``POST /admin/keys``: the key is made by the app and shown once in the answer."""

    name: str = Field(..., min_length=1, max_length=64, pattern=NAME_PATTERN)


class KeyChangeRequest(_KeyFields):
    """``PATCH /admin/keys/{name}``: the fields given replace the key's (``null`` clears a limit or the model
    allow-list)."""
