"""The data folder holds PHI (the database, raw objects, the audit key): it is private to the service's user.

:func:`prepare_data_dir` runs before anything is created in it (``ecgcad serve``, ``migrate``, every command
that opens the database): it sets the process umask to ``0077`` — so that every file we or SQLite create
(the database, its ``-wal`` and ``-shm`` files, objects, checkpoints, the audit key) is ``0600`` and every
folder ``0700`` — creates the data folder ``0700``, and logs a warning naming any existing entry that other
users may read. Existing modes are not changed: an administrator may have widened them on purpose (a backup
group), and a service that silently narrows them would hide that.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

logger = logging.getLogger(__name__)

#: The process umask: no access for group and others.
UMASK = 0o077
#: Mode bits that must not be set on anything under the data folder.
TOO_OPEN = stat.S_IRWXG | stat.S_IRWXO
#: Entries of the data folder checked at start, besides the folder itself (the object tree is not walked:
#: it may hold millions of files; its first level of folders is).
_CHECKED = (
    "ecgcad.db",
    "ecgcad.db-wal",
    "ecgcad.db-shm",
    "audit.key",
    "audit-checkpoint.json",
    "objects",
    "spool",
)


def prepare_data_dir(data_dir: str | os.PathLike[str], *, extra: tuple[Path, ...] = ()) -> list[Path]:
    """Set the umask, create ``data_dir`` private (``0700``) and warn about entries that are too open.

    Parameters
    ----------
    data_dir:
        The data folder (``Settings.data_dir``).
    extra:
        Other files that hold secrets or PHI outside the data folder (a configured key or checkpoint file):
        checked the same way when they exist.

    Returns
    -------
    list[Path]
        The paths whose mode gives group or others any access (each was logged as a warning).
    """
    os.umask(UMASK)
    root = Path(data_dir)
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    candidates = [root, *(root / name for name in _CHECKED), *extra]
    objects = root / "objects"
    if objects.is_dir():
        # The object store's first fan-out level (at most 256 folders), not the objects themselves.
        candidates += sorted(p for p in objects.iterdir() if p.is_dir())
    too_open = []
    for path in candidates:
        try:
            mode = path.lstat().st_mode
        except FileNotFoundError:
            continue
        if mode & TOO_OPEN:
            too_open.append(path)
    if too_open:
        shown = ", ".join(f"{p} ({stat.S_IMODE(p.lstat().st_mode):04o})" for p in too_open[:10])
        more = f" and {len(too_open) - 10} more" if len(too_open) > 10 else ""
        logger.warning(
            "data readable by other users: %s%s — the data folder holds PHI and secrets: "
            "chmod 0700 folders and 0600 files (chmod -R go-rwx %s)",
            shown,
            more,
            root,
        )
    return too_open
