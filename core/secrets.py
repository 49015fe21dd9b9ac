"""Random secrets, stored only as hashes and compared in constant time.

Every secret StatsBot hands out (notification keys, connect tokens, worker credentials)
has at least 256 random bits, so a plain SHA-256 is the right hash: there is nothing to
brute-force, and a lookup by hash needs no per-row salt.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

SECRET_BYTES = 32
PREFIX_CHARS = 8


@dataclass(frozen=True)
class NewSecret:
    raw: str  # shown to its owner once, never stored
    hash: str
    prefix: str  # safe to show: the kind marker plus a few characters


def hash_secret(raw: str) -> str:
    return hashlib.sha256(raw.encode("utf-8")).hexdigest()


def new_secret(kind: str) -> NewSecret:
    """A fresh secret like ``exp_3kX…``; ``kind`` is its visible marker (``exp``, ``sbw``, ``sbt``)."""
    raw = f"{kind}_{secrets.token_urlsafe(SECRET_BYTES)}"
    return NewSecret(raw=raw, hash=hash_secret(raw), prefix=raw[: len(kind) + 1 + PREFIX_CHARS])


def matches(raw: str, stored_hash: str) -> bool:
    return hmac.compare_digest(hash_secret(raw), stored_hash)


def short_code(length: int = 8) -> str:
    """A short code a person may read or type: no 0/O/1/l/I."""
    alphabet = "23456789abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ"
    return "".join(secrets.choice(alphabet) for _ in range(length))
