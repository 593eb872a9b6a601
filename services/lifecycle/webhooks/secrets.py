"""Endpoint signing secrets: generation, sealing at rest, and Standard Webhooks signatures."""

from __future__ import annotations

import base64
import os
import secrets
from datetime import UTC, datetime

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from standardwebhooks import Webhook

SECRET_PREFIX = "whsec_"
SECRET_BYTES = 32
_SEALED = "v1:"
_PLAIN = "plain:"


def generate_secret() -> str:
    """A new `whsec_` secret: base64 of 32 random bytes (the format Svix and Standard Webhooks use)."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


class SecretBox:
    """Seals secrets for the database with AES-GCM under a key derived from the service pepper.

    Secrets must stay recoverable (we sign with them), so they cannot be hashed. Without
    a pepper (embedded development default) they are stored as they are, marked `plain:`.
    """

    def __init__(self, pepper: str | None) -> None:
        self._aead: AESGCM | None = None
        if pepper:
            key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"partnerhub webhook secrets").derive(
                pepper.encode()
            )
            self._aead = AESGCM(key)

    def seal(self, secret: str) -> str:
        """The stored form of `secret`."""
        if self._aead is None:
            return _PLAIN + secret
        nonce = os.urandom(12)
        sealed = self._aead.encrypt(nonce, secret.encode(), b"whsec")
        return _SEALED + base64.b64encode(nonce + sealed).decode()

    def open(self, stored: str) -> str:
        """The secret inside a value made by `seal`."""
        if stored.startswith(_PLAIN):
            return stored[len(_PLAIN) :]
        if not stored.startswith(_SEALED):
            raise ValueError("unrecognised sealed secret")
        if self._aead is None:
            raise ValueError("a sealed webhook secret needs PARTNERHUB_SECRET_PEPPER to be opened")
        raw = base64.b64decode(stored[len(_SEALED) :])
        return self._aead.decrypt(raw[:12], raw[12:], b"whsec").decode()


class Signer:
    """Signs a message with every secret currently valid for an endpoint (space-separated)."""

    def __init__(self, secrets_in_use: list[str]) -> None:
        if not secrets_in_use:
            raise ValueError("Signer needs at least one secret")
        self._hooks = [Webhook(secret) for secret in secrets_in_use]

    def signature(self, *, msg_id: str, timestamp: int, body: str) -> str:
        """The `webhook-signature` header value for `body` sent at unix `timestamp`."""
        when = datetime.fromtimestamp(timestamp, tz=UTC)
        return " ".join(hook.sign(msg_id=msg_id, timestamp=when, data=body) for hook in self._hooks)
