"""source objects may hold their bytes in the database (HL7 messages)

An HL7 message is stored with its job in one transaction, with no file and no second flush: the message
body is in ``source_objects.content`` and ``storage_path`` says so.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 09:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("source_objects") as batch:
        batch.add_column(sa.Column("content", sa.LargeBinary(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("source_objects") as batch:
        batch.drop_column("content")
