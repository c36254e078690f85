"""index only the rows that have a value (partial indexes on mostly-empty columns)

An index entry costs a B-tree page in every commit that adds a row; the listeners commit once per HL7
message (a lock-step sender waits for each), so each page counts. A received HL7 message has no SOP
Instance UID, a DICOM instance no MSH-10, and most audit events no patient, user or ECG: these columns are
now indexed only where they are set (``WHERE col IS NOT NULL``). Every query on them compares with ``=``,
which implies ``IS NOT NULL``, so SQLite and PostgreSQL still use the index.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 12:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

#: (table, column) indexed as ``ix_<table>_<column>``.
PARTIAL = (
    ("source_objects", "sop_instance_uid"),
    ("source_objects", "message_control_id"),
    ("audit_events", "user"),
    ("audit_events", "patient_id"),
    ("audit_events", "ecg_id"),
)


def _where(column: str) -> sa.TextClause:
    return sa.text(f'"{column}" IS NOT NULL')


def upgrade() -> None:
    for table, column in PARTIAL:
        name = f"ix_{table}_{column}"
        op.drop_index(name, table_name=table)
        op.create_index(
            name,
            table,
            [column],
            sqlite_where=_where(column),
            postgresql_where=_where(column),
        )


def downgrade() -> None:
    for table, column in PARTIAL:
        name = f"ix_{table}_{column}"
        op.drop_index(name, table_name=table)
        op.create_index(name, table, [column])
