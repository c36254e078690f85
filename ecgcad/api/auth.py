"""API tokens and the request's principal.

A token is 32 random bytes (URL-safe base64, prefixed ``ecgcad_``) shown once when it is created; the
database keeps only its SHA-256 (a token has 256 bits of entropy, so a slow password hash adds nothing).
A request authenticates with ``Authorization: Bearer <token>`` or, for the dashboard, the same token in the
HttpOnly ``ecgcad_session`` cookie — so revoking a token ends its dashboard sessions at once.

Roles, from most to least trusted: ``admin`` (everything, including the audit log), ``operator`` (queues,
deliveries, resend, rescore, results) and ``viewer`` (results only).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from ecgcad.db import audit
from ecgcad.db.models import ApiToken, utcnow
from ecgcad.errors import ConfigurationError

ROLES: tuple[str, ...] = ("admin", "operator", "viewer")
ADMIN: tuple[str, ...] = ("admin",)
OPERATORS: tuple[str, ...] = ("admin", "operator")
EVERYONE: tuple[str, ...] = ROLES

COOKIE_NAME = "ecgcad_session"
TOKEN_PREFIX = "ecgcad_"


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's name and role, and the client address."""

    user: str
    role: str
    address: str | None = None


def hash_token(token: str) -> str:
    """The stored form of ``token`` (hex SHA-256)."""
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, role: str, *, actor: str | None = None) -> str:
    """Create a token called ``name`` with ``role``; return the token (it is not stored, only its hash).

    Parameters
    ----------
    session:
        The caller's transaction; the ``token.created`` audit event commits with it.
    name:
        Unique token name; it is the ``user`` in audit events.
    role:
        One of :data:`ROLES`.
    actor:
        Who created it (recorded in the audit event).

    Raises
    ------
    ConfigurationError
        Unknown role, empty name, or a token with that name exists already (revoked ones included).
    """
    name = name.strip()
    if role not in ROLES:
        raise ConfigurationError(f"unknown role {role!r}: use one of {', '.join(ROLES)}")
    if not name or len(name) > 128:
        raise ConfigurationError("a token name must be 1–128 characters")
    if session.execute(select(ApiToken.id).where(ApiToken.name == name)).first() is not None:
        raise ConfigurationError(f"a token named {name!r} exists already")
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiToken(name=name, role=role, token_hash=hash_token(token)))
    session.flush()
    audit.record(session, "token.created", user=actor, detail={"token": name, "role": role})
    return token


def revoke_token(session: Session, name: str, *, actor: str | None = None) -> None:
    """Revoke the token called ``name`` (idempotent for an already revoked token).

    Raises
    ------
    ConfigurationError
        No token has that name.
    """
    row = session.execute(select(ApiToken).where(ApiToken.name == name)).scalar_one_or_none()
    if row is None:
        raise ConfigurationError(f"no token named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        audit.record(session, "token.revoked", user=actor, detail={"token": name, "role": row.role})


def list_tokens(session: Session) -> list[ApiToken]:
    """All tokens (hashes included; never print them)."""
    return list(session.execute(select(ApiToken).order_by(ApiToken.id)).scalars())


def authenticate(session: Session, token: str | None) -> ApiToken | None:
    """The live token row for ``token``, or None when it is missing, unknown or revoked."""
    if not token:
        return None
    digest = hash_token(token)
    row = session.execute(select(ApiToken).where(ApiToken.token_hash == digest)).scalar_one_or_none()
    if row is None or row.revoked_at is not None or not hmac.compare_digest(row.token_hash, digest):
        return None
    row.last_used_at = utcnow()
    return row
