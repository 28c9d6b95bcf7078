"""API keys, the principal a request acts as, and signed URLs. Pure logic, no I/O.

A key is `sst_<id>_<secret>`: the prefix makes a leaked key easy to recognise (and to scan
for), the id finds its row in the job store in one indexed read, and the secret is
`secrets.token_urlsafe(32)` (256 random bits). Only the sha256 of the whole key is stored:
for a key that random a plain hash is as strong as a slow one, and it lets every API process
check a key with one lookup and one `hmac.compare_digest`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

__all__ = [
    "ADMIN_MAX_PRIORITY",
    "DEFAULT_MAX_PRIORITY",
    "OPEN",
    "ApiKey",
    "Principal",
    "hash_key",
    "new_key",
    "parse_key",
    "sign_url",
    "verify_signature",
]

PREFIX = "sst_"
DEFAULT_MAX_PRIORITY = 5
"""Highest priority an ordinary key may ask for, unless created with another."""
ADMIN_MAX_PRIORITY = 10

_KEY = re.compile(r"sst_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
# Compared against when the key id is unknown, so that an unknown key costs the same hash and
# comparison as a known one with the wrong secret.
_DUMMY_HASH = hashlib.sha256(b"sst_000000000000_unknown").hexdigest()


@dataclass
class ApiKey:
    """A key as the job store keeps it: never the key itself, only its hash."""

    id: str
    name: str
    key_hash: str
    admin: bool = False
    max_priority: int = DEFAULT_MAX_PRIORITY
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ApiKey:
        values = {key: data[key] for key in cls.__dataclass_fields__ if key in data}
        for name in ("created_at", "revoked_at"):
            value = values.get(name)
            if isinstance(value, str):
                value = datetime.fromisoformat(value)
            if isinstance(value, datetime) and value.tzinfo is None:
                value = value.replace(tzinfo=UTC)
            values[name] = value
        values["admin"] = bool(values.get("admin", False))
        return cls(**values)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(
    name: str, *, admin: bool = False, max_priority: int | None = None
) -> tuple[str, ApiKey]:
    """A fresh key and its stored record; the key itself exists only in the return value."""
    if max_priority is None:
        max_priority = ADMIN_MAX_PRIORITY if admin else DEFAULT_MAX_PRIORITY
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key, ApiKey(
        id=key_id, name=name, key_hash=hash_key(key), admin=admin, max_priority=max_priority
    )


def parse_key(key: str) -> str | None:
    """The id part of a well-formed key, else None."""
    match = _KEY.fullmatch(key)
    return match.group(1) if match else None


def key_matches(key: str, record: ApiKey | None) -> bool:
    """Whether `key` is `record`'s and the record is active; the same work either way."""
    expected = record.key_hash if record is not None else _DUMMY_HASH
    same = hmac.compare_digest(hash_key(key), expected)
    return same and record is not None and record.active


@dataclass(frozen=True)
class Principal:
    """Who a request acts as. `key_id` None: the API is open (no keys, or AUTH=off), or the
    request came with a signed URL."""

    key_id: str | None
    name: str
    admin: bool
    max_priority: int

    @property
    def owner_filter(self) -> str | None:
        """The owner whose jobs alone this principal sees; None: every job."""
        return None if self.admin else self.key_id

    @classmethod
    def of(cls, key: ApiKey) -> Principal:
        return cls(key_id=key.id, name=key.name, admin=key.admin, max_priority=key.max_priority)


OPEN = Principal(key_id=None, name="anonymous", admin=True, max_priority=ADMIN_MAX_PRIORITY)
"""The principal of every request while the API is open: it sees and may do everything."""


# --- signed URLs ---------------------------------------------------------------------------


def _signature(secret: bytes, method: str, path: str, expires: int) -> str:
    message = f"{method.upper()}\n{path}\n{expires}".encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()


def sign_url(secret: bytes, url: str, *, lifetime: int, method: str = "GET") -> tuple[str, int]:
    """`url` with `expires` and `signature` appended, valid for `lifetime` seconds, and its
    expiry (unix time). The signature covers the method, the path and the expiry, not the rest
    of the query: a signed download link works for each format of that one job."""
    path, _, query = url.partition("?")
    expires = int(time.time()) + lifetime
    signature = _signature(secret, method, path, expires)
    joiner = "&" if query else ""
    return f"{path}?{query}{joiner}expires={expires}&signature={signature}", expires


def verify_signature(
    secret: bytes, method: str, path: str, expires: str, signature: str, *, now: float | None = None
) -> bool:
    if not expires.isdigit() or len(expires) > 12 or not re.fullmatch(r"[0-9a-f]{64}", signature):
        return False
    if int(expires) < (time.time() if now is None else now):
        return False
    return hmac.compare_digest(_signature(secret, method, path, int(expires)), signature)
