"""Database: SQLAlchemy models, sessions, migrations, the object store and the audit log."""

from __future__ import annotations

from ecgcad.db.objects import ObjectStore
from ecgcad.db.session import Database

__all__ = ["Database", "ObjectStore"]
