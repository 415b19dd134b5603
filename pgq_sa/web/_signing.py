"""HMAC signatures for the dashboard's cookies and form tokens (constant-time checks)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def secret_from(value: str | bytes | None) -> bytes:
    """The signing key: ``value`` (hashed to a fixed length) or a fresh random one."""
    if value is None:
        return new_secret()
    raw = value.encode() if isinstance(value, str) else value
    if not raw:
        raise ValueError("secret_key must not be empty")
    return hashlib.sha256(b"pgq-sa web secret\0" + raw).digest()


def sign(secret: bytes, purpose: str, value: str) -> str:
    """A signature of ``value`` for ``purpose`` (URL-safe base64, no padding)."""
    digest = hmac.new(secret, f"{purpose}\0{value}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def verify(secret: bytes, purpose: str, value: str, signature: str) -> bool:
    return hmac.compare_digest(sign(secret, purpose, value).encode(), signature.encode())


def same(given: str, expected: str) -> bool:
    """Constant-time equality of two secrets (a password, a token)."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())
