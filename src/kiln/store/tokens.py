"""Access tokens for the REST API (`kiln token create|list|revoke`, checked by `kiln serve`).

A token is shown once, when it is made; the catalog keeps only its SHA-256 (the token is 32
random bytes, so a plain hash is as good as a slow one and costs nothing per request). Each token
is scoped to subscriptions (`*` for any) and may be read-only (GET only).
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError

from kiln.errors import InvalidInput, NotFound
from kiln.store.db import Catalog, Row, now

PREFIX = "kiln_"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Token:
    name: str
    subscriptions: tuple[str, ...]  # lower-cased; "*" means any
    read_only: bool
    created: float

    def allows(self, subscription: str) -> bool:
        return "*" in self.subscriptions or subscription.lower() in self.subscriptions

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "subscriptions": list(self.subscriptions), "readOnly": self.read_only,
                "created": self.created}


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Tokens:
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def create(self, name: str, subscriptions: tuple[str, ...] | list[str], *, read_only: bool = False) -> str:
        """Make a token; returns its secret (the only time it exists outside the caller's hands)."""
        if not _NAME.match(name):
            raise InvalidInput(f"invalid token name {name!r}", hint="letters, digits, '.', '_' and '-', at most 64")
        subs = tuple(sorted({s.strip().lower() for s in subscriptions if s.strip()}))
        if not subs:
            raise InvalidInput("a token needs at least one subscription", hint="--subscription SUB (or '*' for any)")
        secret = PREFIX + secrets.token_urlsafe(32)
        try:
            with self.catalog.write() as db:
                db.execute("INSERT INTO api_tokens (name, token_hash, subscriptions, read_only, created) VALUES (?, ?, ?, ?, ?)",
                           (name, _hash(secret), json.dumps(subs), int(read_only), now()))
        except IntegrityError as e:
            raise InvalidInput(f"a token named {name!r} exists already", hint=f"kiln token revoke {name} first") from e
        return secret

    def check(self, secret: str) -> Token | None:
        """The token this secret is, or None."""
        r = self.catalog.one("SELECT * FROM api_tokens WHERE token_hash = ?", (_hash(secret),))
        return None if r is None else self._token(r)

    def list(self) -> list[Token]:
        return [self._token(r) for r in self.catalog.query("SELECT * FROM api_tokens ORDER BY name")]

    def revoke(self, name: str) -> None:
        with self.catalog.write() as db:
            if db.execute("DELETE FROM api_tokens WHERE name = ?", (name,)).rowcount == 0:
                raise NotFound(f"no token named {name!r}", hint="kiln token list shows the tokens")

    @staticmethod
    def _token(r: Row) -> Token:
        return Token(r["name"], tuple(json.loads(r["subscriptions"])), bool(r["read_only"]), r["created"])
