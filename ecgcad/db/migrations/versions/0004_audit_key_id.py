"""audit events name the HMAC key of their hash (a keyed chain)

From this revision on, each audit event's ``hash`` is an HMAC-SHA-256 keyed with a secret kept outside the
database (``ecgcad.db.audit_key``), and ``key_id`` names that key. Events written before keep ``key_id``
NULL and their unkeyed SHA-256 hash: they still verify, and the chain goes on from their last hash. Nothing
is rewritten (the table is append-only). A plain ``ADD COLUMN`` keeps the append-only triggers.

Downgrading drops the column; the older code cannot verify keyed events.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_update BEFORE UPDATE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_events_no_delete BEFORE DELETE ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END",
]


def upgrade() -> None:
    op.add_column("audit_events", sa.Column("key_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.drop_column("audit_events", "key_id")
        return
    # SQLite rebuilds the table to drop a column, and its triggers go with the old table.
    with op.batch_alter_table("audit_events") as batch:
        batch.drop_column("key_id")
    for stmt in _SQLITE_TRIGGERS:
        op.execute(stmt)
