"""Pipelines: step jobs point at their pipeline job; admin-defined pipelines are kept.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""
import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("parent_uuid", sa.String(36), nullable=True))
        batch.add_column(sa.Column("step", sa.String(100), nullable=True))
        batch.add_column(sa.Column("pipeline", sa.JSON, nullable=True))
    op.create_index("ix_jobs_parent", "jobs", ["parent_uuid"])
    op.create_table(
        "pipelines",
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("definition", sa.JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("pipelines")
    op.drop_index("ix_jobs_parent", "jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("pipeline")
        batch.drop_column("step")
        batch.drop_column("parent_uuid")
