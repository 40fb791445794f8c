"""Who is calling the gateway and what they may do: API keys, roles, stream tokens and per-key slots.

The pure core of the gateway's security, tested without a server:

- :class:`ApiKey`: a key as configured, with a name (what the tables record as
  a job's owner; never the key itself), a role and optional limits of its own;
- :class:`Keyring`: the configured keys, looked up in constant time per key;
- :class:`Caller`: the key a request came with, or the open caller of a
  gateway run without keys; it decides which jobs the caller may see;
- :class:`StreamTokens`: short-lived, per-job tokens for ``EventSource``
  (which cannot send headers), so that keys never travel in URLs;
- :class:`Slots`: counters of concurrent streams and uploads per key.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
import time
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

MAX_PRIORITY = 9
ALL_JOBS = "*"
"""The scope of a stream token for ``GET /events`` (every job the caller may see)."""


class Role(StrEnum):
    """``submit``: queue jobs and reach one's own; ``admin``: see and steer every job."""

    SUBMIT = "submit"
    ADMIN = "admin"


class ApiKey(BaseModel):
    """One accepted key, as ``PAGEWIRE_API_KEYS`` lists it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$", description="recorded as the owner of the key's jobs")
    # Sixteen characters at least: a short key is guessed faster than any limit here slows a guesser down.
    key: SecretStr = Field(min_length=16)
    role: Role = Role.SUBMIT
    max_priority: int | None = Field(default=None, ge=0, le=MAX_PRIORITY)
    max_streams: int | None = Field(default=None, ge=1)
    max_uploads: int | None = Field(default=None, ge=1)

    @classmethod
    def from_plain(cls, key: str) -> ApiKey:
        """A bare key string (the older form): a ``submit`` key named after a short hash of itself.

        A hash, not the key's place in the list: the name is stored with every
        job, so it must not change when keys are added or reordered.
        """
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        return cls(name=f"key-{digest}", key=SecretStr(key))


@dataclass(frozen=True)
class Limits:
    """What one caller may do at once; ``None``: no limit."""

    max_priority: int = MAX_PRIORITY
    max_streams: int | None = None
    max_uploads: int | None = None


@dataclass(frozen=True)
class Caller:
    """Who a request comes from: a key's name and role, or the open caller (``name`` None)."""

    name: str | None
    role: Role
    limits: Limits = field(default_factory=Limits)

    @property
    def admin(self) -> bool:
        return self.role == Role.ADMIN

    @property
    def owner(self) -> str | None:
        """What a job this caller submits records as its owner."""
        return self.name

    @property
    def slot_key(self) -> str:
        return self.name or "(open)"

    def sees(self, owner: str | None) -> bool:
        """Whether a job with this owner exists for this caller; jobs of no key are for admins only."""
        return self.admin or (owner is not None and owner == self.name)


def open_caller(limits: Limits) -> Caller:
    """The caller of a gateway run without keys: it sees every job and may ask for any priority.

    With no keys there is no one to keep out of the high lane (anyone may
    call as anyone), so only the stream and upload limits of ``limits`` apply.
    """
    return Caller(None, Role.ADMIN, replace(limits, max_priority=MAX_PRIORITY))


class Keyring:
    """The configured keys; :meth:`identify` compares with every one so timing tells nothing."""

    def __init__(self, keys: list[ApiKey], defaults: Limits) -> None:
        self._keys = list(keys)
        self._by_name = {k.name: k for k in keys}
        self._defaults = defaults

    def __bool__(self) -> bool:
        return bool(self._keys)

    def identify(self, given: str) -> Caller | None:
        found: ApiKey | None = None
        for key in self._keys:
            # No early exit: the time taken must not say which key nearly matched, or where it sits.
            if hmac.compare_digest(given.encode(), key.key.get_secret_value().encode()):
                found = key
        return self.caller(found) if found is not None else None

    def named(self, name: str) -> Caller | None:
        """The caller of a key still configured under ``name`` (a stream token names its key)."""
        key = self._by_name.get(name)
        return self.caller(key) if key is not None else None

    def caller(self, key: ApiKey) -> Caller:
        base = self._defaults
        priority = MAX_PRIORITY if key.role == Role.ADMIN else base.max_priority
        limits = Limits(
            max_priority=key.max_priority if key.max_priority is not None else priority,
            max_streams=key.max_streams or base.max_streams,
            max_uploads=key.max_uploads or base.max_uploads,
        )
        return Caller(key.name, key.role, limits)


class TokenError(ValueError):
    """A stream token that is malformed, forged, expired, or for another job."""


class StreamTokens:
    """Signed, expiring tokens that open one job's event stream (or ``GET /events``) for one key.

    A token is ``payload.mac``: the payload names the job (or ``*``), the key's
    name and the expiry; the mac is an HMAC-SHA256 of it. Nothing in it is
    secret, and it opens nothing but the stream it names, for minutes: a token
    in an access log or a browser's history is worth little. The key is looked
    up again when the token is used, so removing a key revokes its tokens.
    """

    def __init__(self, secret: bytes | None, ttl_s: float) -> None:
        # Without a configured secret each process makes its own: tokens then work on the gateway that
        # issued them only, which is why several gateways behind one address need one shared secret.
        self._secret = secret or secrets.token_bytes(32)
        self.ttl_s = ttl_s

    def issue(self, key_name: str | None, scope: str, now: float | None = None) -> tuple[str, int]:
        """A token for ``scope`` (a job id, or ``*``) and its expiry in Unix seconds."""
        expires = int((now if now is not None else time.time()) + self.ttl_s)
        payload = _b64(json.dumps({"s": scope, "k": key_name, "e": expires}, separators=(",", ":")).encode())
        return f"{payload}.{_b64(self._mac(payload))}", expires

    def verify(self, token: str, scope: str, now: float | None = None) -> str | None:
        """The key name inside a valid token for ``scope``; raises :class:`TokenError` otherwise."""
        payload, _, mac = token.partition(".")
        try:
            given = _unb64(mac)
            data: dict[str, Any] = json.loads(_unb64(payload))
        except (binascii.Error, ValueError) as exc:
            raise TokenError("not a stream token of this gateway") from exc
        if not hmac.compare_digest(given, self._mac(payload)):
            raise TokenError("not a stream token of this gateway")
        if not isinstance(data, dict) or data.get("s") != scope:
            raise TokenError("the stream token is for another stream")
        expires = data.get("e")
        if not isinstance(expires, int) or expires < (now if now is not None else time.time()):
            raise TokenError("the stream token has expired: ask for a new one")
        name = data.get("k")
        return name if isinstance(name, str) else None

    def _mac(self, payload: str) -> bytes:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).digest()


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Slots:
    """Concurrent streams or uploads per key, in this process; a lease gives its slot back once."""

    def __init__(self) -> None:
        self._held: dict[str, int] = {}

    def held(self, key: str) -> int:
        return self._held.get(key, 0)

    def take(self, key: str, limit: int | None) -> Lease | None:
        """A lease, or None when ``key`` holds ``limit`` slots already."""
        if limit is not None and self.held(key) >= limit:
            return None
        self._held[key] = self.held(key) + 1
        return Lease(self, key)

    def _give_back(self, key: str) -> None:
        left = self.held(key) - 1
        if left > 0:
            self._held[key] = left
        else:
            self._held.pop(key, None)


class Lease:
    """One slot; :meth:`release` is safe to call from every path that ends its use."""

    def __init__(self, slots: Slots, key: str) -> None:
        self._slots = slots
        self._key = key
        self._released = False

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._slots._give_back(self._key)
