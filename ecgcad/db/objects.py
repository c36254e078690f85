"""Content-addressed raw object store under ``data_dir/objects``.

Objects are written to a temporary file, fsynced, renamed into place and the directory fsynced, so that an
object is durable before the database row that points at it is committed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ecgcad.errors import BackPressureError, StorageError

if TYPE_CHECKING:
    from ecgcad.db.models import SourceObject


def write_atomically(path: Path, data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` through a private temporary file (``0600``) renamed into place.

    With ``fsync`` the file and its folder's entry are on stable storage when this returns. The folder is
    created when missing. A failure leaves ``path`` as it was and no temporary file behind.

    Raises
    ------
    OSError
        The file could not be written, flushed or renamed.
    """
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    except FileNotFoundError:  # the folder does not exist yet
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if fsync:
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


class ObjectStore:
    """Stores bytes under their SHA-256.

    Parameters
    ----------
    root:
        Folder for objects (created if missing).
    min_free_bytes:
        Refuse writes (``BackPressureError``) when free space would drop under this reserve.
    fsync:
        Flush file and directory to stable storage (off only in benchmarks that say so).
    """

    def __init__(self, root: str | os.PathLike[str], *, min_free_bytes: int = 0, fsync: bool = True) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.min_free_bytes = min_free_bytes
        self.fsync = fsync

    def path_for(self, sha256: str) -> Path:
        """Where the object with this digest lives."""
        return self.root / sha256[:2] / sha256[2:4] / sha256

    def free_bytes(self) -> int:
        """Free bytes on the store's file system."""
        return shutil.disk_usage(self.root).free

    def check_space(self, needed: int = 0) -> None:
        """Raise :class:`BackPressureError` if free space is under the reserve."""
        if self.min_free_bytes and self.free_bytes() - needed < self.min_free_bytes:
            raise BackPressureError("free disk space is under the configured reserve")

    def put(self, data: bytes, *, sync: bool = True) -> tuple[str, Path]:
        """Store ``data``; return its SHA-256 and path (idempotent).

        With ``sync`` the object is on stable storage when this returns; without it the caller must call
        :meth:`sync` before relying on it (group commit: one flush for many objects).
        """
        digest = hashlib.sha256(data).hexdigest()
        path = self.path_for(digest)
        try:
            if os.stat(path).st_size == len(data):
                return digest, path
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StorageError(f"cannot write object: {exc.strerror}") from exc
        self.check_space(len(data))
        try:
            write_atomically(path, data, fsync=self.fsync and sync)
        except OSError as exc:
            raise StorageError(f"cannot write object: {exc.strerror}") from exc
        return digest, path

    def sync(self) -> None:
        """Flush every object written with ``sync=False`` (file data and directory entries) to stable storage.

        Uses ``syncfs(2)`` on the store's file system: one flush for a whole group of objects.
        """
        if not self.fsync:
            return
        try:
            fd = os.open(self.root, os.O_RDONLY)
        except OSError as exc:
            raise StorageError(f"cannot flush the object store: {exc.strerror}") from exc
        try:
            if _LIBC is not None and _LIBC.syncfs(fd) == 0:
                return
            os.sync()  # no syncfs: flush everything
        finally:
            os.close(fd)

    def get(self, sha256: str) -> bytes:
        """Read an object back."""
        try:
            return self.path_for(sha256).read_bytes()
        except OSError as exc:
            raise StorageError(f"object {sha256[:12]} unreadable: {exc.strerror}") from exc

    def delete(self, sha256: str) -> bool:
        """Delete an object (retention); True if it existed."""
        try:
            self.path_for(sha256).unlink()
            return True
        except FileNotFoundError:
            return False


def source_bytes(store: ObjectStore, source: SourceObject) -> bytes:
    """The bytes of a :class:`~ecgcad.db.models.SourceObject`: from the database when it holds them
    (HL7 messages), else from ``store``.

    Raises
    ------
    StorageError
        The object is gone (retention) or unreadable.
    """
    from ecgcad.db.models import IN_DATABASE

    if source.storage_path == IN_DATABASE:
        content = source.content
        if content is None:
            raise StorageError(f"object {source.sha256[:12]} has been deleted")
        return bytes(content)
    return store.get(source.sha256)


def _load_libc() -> object | None:
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        return libc
    except (OSError, AttributeError):
        return None


_LIBC: Any = _load_libc()
