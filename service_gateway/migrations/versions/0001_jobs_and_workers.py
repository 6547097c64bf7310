"""Jobs and workers.

Revision ID: 0001
Revises:
Create Date: 2026-11-22
"""
import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "jobs",
        sa.Column("uuid", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("queue", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("doc_url", sa.Text, nullable=False),
        sa.Column("params", sa.JSON, nullable=False),
        sa.Column("misc", sa.JSON, nullable=False),
        sa.Column("ann_doc_id", sa.String(200)),
        sa.Column("callback_url", sa.Text),
        sa.Column("progress", sa.Integer, nullable=False),
        sa.Column("cancel_requested", sa.Boolean, nullable=False),
        sa.Column("error_code", sa.Integer),
        sa.Column("error_message", sa.Text),
        sa.Column("worker", sa.String(255)),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at"])
    op.create_index("ix_jobs_created", "jobs", ["created_at"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "workers",
        sa.Column("hostname", sa.String(255), primary_key=True),
        sa.Column("queues", sa.Text, nullable=False),
        sa.Column("concurrency", sa.Integer, nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_index("ix_jobs_status", "jobs")
    op.drop_index("ix_jobs_created", "jobs")
    op.drop_index("ix_jobs_owner_created", "jobs")
    op.drop_table("jobs")
