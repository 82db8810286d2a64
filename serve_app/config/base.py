"""The base of every settings type."""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    # Unknown fields are refused, so a typo in a config file fails at start with the field's name instead of
    # being silently ignored; frozen, so a deployment cannot change what it was started with.
    model_config = ConfigDict(extra="forbid", frozen=True)
