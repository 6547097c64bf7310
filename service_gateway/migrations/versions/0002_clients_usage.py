"""Clients, the login throttle and the usage ledger.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "clients",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("secret_hash", sa.Text, nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("scopes", sa.JSON, nullable=False),
        sa.Column("quotas", sa.JSON, nullable=False),
        sa.Column("token_version", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "login_throttle",
        sa.Column("client_id", sa.String(200), primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "usage",
        sa.Column("job_uuid", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("service", sa.String(100), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("media_seconds", sa.Float, nullable=False),
        sa.Column("wall_seconds", sa.Float, nullable=False),
        sa.Column("cpu_seconds", sa.Float, nullable=False),
        sa.Column("output_bytes", sa.BigInteger, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True)),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_usage_owner_finished", "usage", ["owner", "finished_at"])
    op.create_index("ix_usage_finished", "usage", ["finished_at"])
    # GET /jobs filters by owner + service / status, newest first; quotas count a client's jobs in flight.
    op.create_index("ix_jobs_owner_service_created", "jobs", ["owner", "service", "created_at"])
    op.create_index("ix_jobs_owner_status_created", "jobs", ["owner", "status", "created_at"])
    op.create_index("ix_jobs_owner_unfinished", "jobs", ["owner", "finished_at"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_unfinished", "jobs")
    op.drop_index("ix_jobs_owner_status_created", "jobs")
    op.drop_index("ix_jobs_owner_service_created", "jobs")
    op.drop_index("ix_usage_finished", "usage")
    op.drop_index("ix_usage_owner_finished", "usage")
    op.drop_table("usage")
    op.drop_table("login_throttle")
    op.drop_table("clients")
