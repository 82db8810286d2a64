"""The admin API's client: the one used by `serve-app deploy | status | history | rollback | scale | adapters`, the
benchmarks and the tests.

``AdminClient`` is an ``httpx.Client`` (so ``get``/``post``/``request`` give raw responses where a caller
needs the status code) with the Bearer key set and one method per admin call. The methods return the JSON
answer and raise ``AdminError`` (status and the OpenAI-style error body's message) when the call is refused.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import httpx

KEY_ENV = "SERVE_APP_ADMIN_KEY"
KEY_FILE_ENV = "SERVE_APP_ADMIN_KEY_FILE"


def admin_key(key: str | None = None) -> str | None:
    """The admin key: ``key``, else $SERVE_APP_ADMIN_KEY, else the contents of the file
    $SERVE_APP_ADMIN_KEY_FILE names (a mounted secret), else None (no Authorization header)."""
    if key:
        return key
    if os.environ.get(KEY_ENV):
        return os.environ[KEY_ENV]
    if os.environ.get(KEY_FILE_ENV):
        with open(os.environ[KEY_FILE_ENV]) as fh:
            return fh.read().strip() or None
    return None


class AdminError(httpx.HTTPStatusError):
    """An admin call the app refused. ``status`` and ``message`` come from the response (the message from
    the error body ``{"error": {"message": ...}}``, else its text); ``response`` is the response itself.
    An ``httpx.HTTPError``, so callers that treat any HTTP failure alike keep doing so."""

    def __init__(self, response: httpx.Response, expected: int | None = None):
        self.status = response.status_code
        self.message = _error_message(response)
        if expected is not None and not response.is_error:
            self.message = f"expected {expected}: {self.message}"
        super().__init__(f"{self.status}: {self.message}", request=response.request, response=response)


def _error_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    if isinstance(body, dict) and isinstance(body.get("error"), dict) and "message" in body["error"]:
        return str(body["error"]["message"])
    return response.text


class AdminClient(httpx.Client):
    """``AdminClient(url, key=None)``: the admin API of the app at ``url``; the key as ``admin_key`` finds it.

    ``clock`` and ``sleep`` pace ``follow`` (injected so that a test follows a release without waiting);
    other keyword arguments go to ``httpx.Client`` (e.g. ``transport``).
    """

    POLL_S = 0.5  # how often follow() asks for a release's status

    def __init__(self, url: str, key: str | None = None, *, timeout: float = 120.0,
                 clock: Callable[[], float] = time.monotonic, sleep: Callable[[float], None] = time.sleep,
                 **kw: Any):
        key = admin_key(key)
        headers = {**kw.pop("headers", {}), **({"Authorization": f"Bearer {key}"} if key else {})}
        super().__init__(base_url=url, headers=headers, timeout=timeout, **kw)
        self._clock, self._sleep = clock, sleep

    def call(self, method: str, path: str, *, expect: int | None = None, **kw: Any) -> Any:
        """The JSON answer of one admin call; ``AdminError`` on an error status, or on any other status than
        ``expect`` when given."""
        r = self.request(method, path, **kw)
        if r.is_error or (expect is not None and r.status_code != expect):
            raise AdminError(r, expect)
        return r.json()

    def status(self) -> dict:
        """Serve status per deployment, the current and last good release, a canary in progress."""
        return self.call("GET", "/admin/status")

    def releases(self) -> list[dict]:
        return self.call("GET", "/admin/releases")["data"]

    def release(self, n: int) -> dict:
        """One release of the history, with its full Serve config."""
        return self.call("GET", f"/admin/releases/{n}")

    def current_config(self) -> dict:
        """The running Serve config (every scope's last good release composed: the starting point of a new
        release)."""
        return self.call("GET", "/admin/config")["config"]

    # The calls that start a release answer 202 at once; the outcome is the release's (follow()).

    def deploy(self, config: dict, note: str | None = None, canary: dict | None = None, model: str | None = None,
               component: str | None = None) -> dict:
        """Deploy a release, of the whole app or scoped to one ``model`` or ``component``; ``canary``: {} for the
        release's own canary settings, or overrides of them."""
        body = {"config": config, "note": note, "model": model, "component": component} | (
            {"canary": canary} if canary is not None else {})
        return self.call("POST", "/admin/releases", json=body, expect=202)

    def rollback(self, release: int | None = None, model: str | None = None, component: str | None = None) -> dict:
        """Redeploy release ``release`` (default: the previous good one) as a new release, of the whole app or
        of one ``model``'s or ``component``'s settings."""
        body = {"release": release, "model": model, "component": component}
        return self.call("POST", "/admin/rollback", json=body, expect=202)

    def remove_model(self, name: str) -> dict:
        """Remove a served model (a release of its scope)."""
        return self.call("DELETE", f"/admin/models/{name}", expect=202)

    def scale(self, deployment: str, replicas: int | None = None, factor: float | None = None) -> dict:
        """Fix a deployment's replicas, or multiply them or its autoscaling bounds (one of the two)."""
        body = {"deployment": deployment, "replicas": replicas, "factor": factor}
        return self.call("POST", "/admin/scale", json=body, expect=202)

    def adapters(self) -> list[dict]:
        """Every LoRA adapter of the current release: name, model, folder."""
        return self.call("GET", "/admin/adapters")["data"]

    def load_adapter(self, name: str, path: str, model: str | None = None) -> dict:
        """Load a LoRA adapter (``path`` under the model's adapter root) on ``model`` (default: the first one):
        refused at once when it does not load, else deployed as a release."""
        return self.call("POST", "/admin/adapters", json={"name": name, "path": path, "model": model}, expect=202)

    def unload_adapter(self, name: str) -> dict:
        return self.call("DELETE", f"/admin/adapters/{name}", expect=202)

    def audit(self) -> list[dict]:
        return self.call("GET", "/admin/audit")["data"]

    def keys(self) -> list[dict]:
        """Every API key of the state store (revoked ones too), never the key itself."""
        return self.call("GET", "/admin/keys")["data"]

    def create_key(self, name: str, **fields: Any) -> dict:
        """A new API key: the answer holds the key itself (``key``), shown this once."""
        return self.call("POST", "/admin/keys", json={"name": name, **fields}, expect=201)

    def change_key(self, name: str, **fields: Any) -> dict:
        return self.call("PATCH", f"/admin/keys/{name}", json=fields, expect=200)

    def revoke_key(self, name: str) -> dict:
        return self.call("DELETE", f"/admin/keys/{name}", expect=200)

    def follow(self, n: int, timeout_s: float = 600.0) -> dict:
        """Release ``n`` once it is no longer deploying (good, failed, rolled back…); ``TimeoutError`` if it
        still is after ``timeout_s`` (the release itself goes on)."""
        deadline = self._clock() + timeout_s
        while True:
            rel = self.release(n)
            if rel["status"] != "deploying":
                return rel
            if self._clock() >= deadline:
                raise TimeoutError(f"release {n} still deploying after {timeout_s:g}s")
            self._sleep(self.POLL_S)
