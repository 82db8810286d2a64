"""Admin key checks: no key configured → the admin API is off (403) whatever is sent; a missing, malformed
or wrong key → 401; only the right bearer key passes. The key is read from the environment or a file and
only its digest is kept."""

import hashlib

import pytest

from serve_app.errors import Forbidden, Unauthorized
from serve_app.ingress.admin_routes import admin_key_digest, check_admin


def test_no_key_configured_disables_the_admin_api(monkeypatch):
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY", raising=False)
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY_FILE", raising=False)
    assert admin_key_digest() is None
    with pytest.raises(Forbidden):
        check_admin("Bearer anything", None)


@pytest.mark.parametrize("header", [None, "", "Bearer", "Bearer ", "Basic s3cret", "bearer wrong", "s3cret"])
def test_wrong_or_missing_key_is_401(header):
    with pytest.raises(Unauthorized):
        check_admin(header, hashlib.sha256(b"s3cret").digest())


def test_right_key_passes_from_env_or_file(monkeypatch, tmp_path):
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY", "s3cret")
    check_admin("Bearer s3cret", admin_key_digest())
    monkeypatch.delenv("SERVE_APP_ADMIN_KEY")
    secret = tmp_path / "key"
    secret.write_text("from-file\n")
    monkeypatch.setenv("SERVE_APP_ADMIN_KEY_FILE", str(secret))
    digest = admin_key_digest()
    assert digest == hashlib.sha256(b"from-file").digest()
    check_admin("Bearer from-file", digest)
