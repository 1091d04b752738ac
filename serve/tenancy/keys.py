"""API keys: their configuration (`[[keys]]`), hashing, and the lookup from a bearer token to a tenant.

Only hashes are stored: `sha256:<hex>` of the key. Keys are random (`sluice keys new`), not passwords,
so one unsalted SHA-256 is enough: there is no dictionary to try against it.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

HASH_PREFIX = "sha256:"
DEFAULT_KEY_ID = "default"  # the id of a single key given by --api-key, --api-key-file or $SLUICE_API_KEY


def hash_key(key: str) -> str:
    return HASH_PREFIX + hashlib.sha256(key.encode("utf-8")).hexdigest()


def new_key() -> str:
    return "sk-sluice-" + secrets.token_urlsafe(32)  # 256 bits


def _check_hash(key_id: str, value: str) -> None:
    digest = value.removeprefix(HASH_PREFIX)
    if not value.startswith(HASH_PREFIX) or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"key {key_id!r}: hash must be 'sha256:' + 64 lowercase hex digits "
                         "(print one with `sluice keys hash`)")


@dataclass(frozen=True)
class KeySpec:
    """One `[[keys]]` entry. The secret is `hash` (of the key) or `env` (a variable holding the key)."""

    id: str
    hash: str | None = None
    env: str | None = None
    models: tuple[str, ...] | None = None  # allow-list of model names; None = every model
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None  # prompt + completion tokens
    max_concurrent: int | None = None  # requests in flight at once

    def __post_init__(self) -> None:
        if not self.id:
            raise ValueError("every [[keys]] entry needs a non-empty `id`")
        if (self.hash is None) == (self.env is None):
            raise ValueError(f"key {self.id!r}: give exactly one of `hash` or `env`")
        if self.hash is not None:
            _check_hash(self.id, self.hash)
        for name in ("requests_per_minute", "tokens_per_minute", "max_concurrent"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"key {self.id!r}: {name} must be an integer >= 1")

    def secret_hash(self) -> str:
        """The stored hash, or the hash of the key read from `env` now. ValueError when unset."""
        if self.hash is not None:
            return self.hash
        assert self.env is not None
        value = os.environ.get(self.env)
        if not value:
            raise ValueError(f"key {self.id!r} reads its secret from ${self.env}, which is not set")
        return hash_key(value)


@dataclass(frozen=True)
class Tenant:
    spec: KeySpec
    key_hash: str
    # Namespaces this tenant's prefix cache (None: shared cache, the single-tenant case).
    cache_salt: str | None

    @property
    def id(self) -> str:
        return self.spec.id


def cache_salt(key_hash: str) -> str:
    """Derived from the key's hash, not its id: vLLM asks for a salt a third party cannot guess, and a
    shared upstream's other clients may send any salt they like. Stable across restarts."""
    return hashlib.sha256(b"sluice cache salt\x00" + key_hash.encode()).hexdigest()


class KeyRing:
    def __init__(self, specs: tuple[KeySpec, ...]) -> None:
        hashes = [s.secret_hash() for s in specs]
        if len(set(hashes)) != len(hashes):
            raise ValueError("two [[keys]] entries have the same secret")
        # One tenant needs no namespace: nobody else can hit its cache.
        salted = len(specs) > 1
        self.tenants = [Tenant(s, h, cache_salt(h) if salted else None) for s, h in zip(specs, hashes, strict=True)]

    def __bool__(self) -> bool:
        return bool(self.tenants)

    def lookup(self, token: str) -> Tenant | None:
        """Constant time in the token: every stored hash is compared, with no early exit."""
        presented = hash_key(token).encode()
        found = None
        for t in self.tenants:
            if hmac.compare_digest(presented, t.key_hash.encode()):
                found = t
        return found


def all_keys(specs: tuple[KeySpec, ...], single_key: str | None) -> tuple[KeySpec, ...]:
    """The configured keys plus the single `api_key`, as a tenant without limits."""
    if not single_key:
        return specs
    if any(s.id == DEFAULT_KEY_ID for s in specs):
        raise ValueError(f"key id {DEFAULT_KEY_ID!r} is reserved for --api-key / $SLUICE_API_KEY")
    return (*specs, KeySpec(id=DEFAULT_KEY_ID, hash=hash_key(single_key)))


def single_key(flag: str | None, file: str | None, env: str | None) -> str | None:
    """The one key given without a config: --api-key (visible in `ps`), else --api-key-file (its first
    line), else $SLUICE_API_KEY."""
    if flag:
        return flag
    if file:
        try:
            lines = Path(file).read_text(encoding="utf-8").splitlines()
        except OSError as e:
            raise ValueError(f"cannot read --api-key-file {file}: {e}") from e
        key = lines[0].strip() if lines else ""
        if not key:
            raise ValueError(f"--api-key-file {file} is empty")
        return key
    return env or None
