"""Media reservations: the seconds a job in flight holds against its client's monthly media quota.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05
"""
import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "media_reservations",
        sa.Column("job_uuid", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("seconds", sa.Float, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_media_reservations_owner", "media_reservations", ["owner"])


def downgrade() -> None:
    op.drop_index("ix_media_reservations_owner", "media_reservations")
    op.drop_table("media_reservations")
