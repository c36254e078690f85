"""The audit chain's HMAC key: kept outside the database, so that whoever can rewrite the table cannot
recompute the chain.

The key is ``[audit] key`` when set, else the contents of ``[audit] key_file`` (default
``<data_dir>/audit.key``), which is created ``0600`` with 32 random bytes (hex) the first time a process
needs it. Every process that writes to one database must use the same key; in scale-out, give every node the
same file or the same ``ECGCAD_AUDIT__KEY``. Keep a copy of the key with the backups, apart from the
database: without it the chain can no longer be verified.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from ecgcad.errors import ConfigurationError

if TYPE_CHECKING:
    from ecgcad.config import Settings

#: The shortest key accepted, characters.
MIN_KEY_CHARS = 32
_BLOCK = 64  # SHA-256's block size, bytes


class AuditKey:
    """An HMAC-SHA-256 key for the audit chain and its checkpoints.

    The HMAC (RFC 2104) is computed from the key's inner and outer hash states, prepared once: an audit
    event costs two SHA-256 state copies on top of the unkeyed hash (~1 µs), where ``hmac.new`` per event
    would rebuild them each time.

    Parameters
    ----------
    secret:
        The key's text (at least :data:`MIN_KEY_CHARS` characters); its UTF-8 bytes are the HMAC key.

    Raises
    ------
    ConfigurationError
        The key is too short.
    """

    __slots__ = ("_inner", "_outer", "key_id")

    def __init__(self, secret: str) -> None:
        secret = secret.strip()
        if len(secret) < MIN_KEY_CHARS:
            raise ConfigurationError(f"the audit key must have at least {MIN_KEY_CHARS} characters")
        raw = secret.encode()
        #: Names the key in each event and checkpoint without revealing it.
        self.key_id = hashlib.sha256(b"ecgcad audit key id\x00" + raw).hexdigest()[:16]
        block = (hashlib.sha256(raw).digest() if len(raw) > _BLOCK else raw).ljust(_BLOCK, b"\x00")
        self._inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
        self._outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))

    def mac(self, message: bytes) -> str:
        """HMAC-SHA-256 of ``message`` as 64 hex digits (equal to ``hmac.new(key, message, sha256)``)."""
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.hexdigest()

    def __repr__(self) -> str:
        return f"AuditKey(key_id={self.key_id!r})"


def new_key_text() -> str:
    """A fresh random key: 32 bytes as 64 hex digits."""
    return secrets.token_hex(32)


def read_key_file(path: str | os.PathLike[str], *, create: bool = True) -> AuditKey:
    """The key in ``path``; with ``create``, a missing file is created ``0600`` with a random key.

    Two processes starting at once agree on one key: the new file is written aside and linked into place,
    which fails when the other process was first (then its key is read).

    Raises
    ------
    ConfigurationError
        The file is missing (and ``create`` is false), unreadable, or holds too short a key.
    """
    path = Path(path)
    try:
        return AuditKey(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if not create:
            raise ConfigurationError(f"audit key file {path} does not exist") from None
    except OSError as exc:
        raise ConfigurationError(f"audit key file {path} is unreadable: {exc.strerror}") from exc
    except ConfigurationError as exc:
        raise ConfigurationError(f"audit key file {path}: {exc}") from exc
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(new_key_text() + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(tmp, path)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return read_key_file(path, create=False)


def load_key(settings: Settings) -> AuditKey:
    """The audit key of ``settings`` (:class:`ecgcad.config.Settings`): ``[audit] key``, else the key file.

    Raises
    ------
    ConfigurationError
        As :func:`read_key_file`.
    """
    secret = settings.audit.key.get_secret_value()
    if secret:
        return AuditKey(secret)
    return read_key_file(settings.audit_key_file)
