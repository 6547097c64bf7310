"""Job leases and attempts (recovery without relying on the broker), and idempotency keys.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("attempts", sa.Integer, nullable=False, server_default="0"))
        batch.add_column(sa.Column("lease_owner", sa.String(255)))
        batch.add_column(sa.Column("lease_until", sa.DateTime(timezone=True)))
        batch.add_column(sa.Column("note", sa.Text))
    op.create_index("ix_jobs_lease_until", "jobs", ["lease_until"])
    op.create_table(
        "idempotency_keys",
        sa.Column("owner", sa.String(200), primary_key=True),
        sa.Column("key", sa.String(255), primary_key=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("job_uuid", sa.String(36), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_idempotency_created", "idempotency_keys", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_idempotency_created", "idempotency_keys")
    op.drop_table("idempotency_keys")
    op.drop_index("ix_jobs_lease_until", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("note")
        batch.drop_column("lease_until")
        batch.drop_column("lease_owner")
        batch.drop_column("attempts")
