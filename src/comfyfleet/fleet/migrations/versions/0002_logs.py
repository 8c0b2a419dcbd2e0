"""provisioning logs (chunks, checkpoints, progress) and pinned host keys — fleet-provisioning.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "provision_runs",
        sa.Column("instance_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("outcome", sa.String(16)),
        sa.Column("reason", sa.Text),
        sa.Column("progress", sa.Text),
        sa.Column("comfyui_port", sa.Integer),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "log_chunks",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(16), nullable=False),
        sa.Column("offset", sa.BigInteger, nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("at", sa.Float, nullable=False),
    )
    op.create_index("ix_log_chunks_run", "log_chunks", ["instance_id", "run_id", "name", "offset"])
    op.create_table(
        "log_checkpoints",
        sa.Column("instance_id", sa.String(32), primary_key=True),
        sa.Column("run_id", sa.String(32), primary_key=True),
        sa.Column("name", sa.String(16), primary_key=True),
        sa.Column("checkpoint", sa.Text, nullable=False),
        sa.Column("size", sa.BigInteger, nullable=False),
    )
    op.create_table(
        "host_keys",
        sa.Column("instance_id", sa.String(32), primary_key=True),
        sa.Column("host_key", sa.Text, nullable=False),
        sa.Column("pinned_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("host_keys")
    op.drop_table("log_checkpoints")
    op.drop_table("log_chunks")
    op.drop_table("provision_runs")
