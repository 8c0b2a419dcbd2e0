"""The first schema: pools, instances, transitions.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pools",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("draining", sa.Boolean, nullable=False),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("next_create_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_table(
        "instances",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("label", sa.String(128), nullable=False, unique=True),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("provider_kind", sa.String(16), nullable=False),
        sa.Column("provider_id", sa.String(128)),
        sa.Column("offer_id", sa.String(128)),
        sa.Column("machine_id", sa.String(128)),
        sa.Column("gpu_name", sa.String(128)),
        sa.Column("dph", sa.Float, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
        sa.Column("state_since", sa.Float, nullable=False),
        sa.Column("failure_reason", sa.Text),
        sa.Column("lease_id", sa.String(64)),
        sa.Column("ssh_host", sa.String(255)),
        sa.Column("ssh_port", sa.Integer),
        sa.Column("ssh_user", sa.String(64)),
        sa.Column("destroy_attempts", sa.Integer, nullable=False),
    )
    op.create_index("ix_instances_pool", "instances", ["pool"])
    op.create_table(
        "transitions",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("from_state", sa.String(16)),
        sa.Column("to_state", sa.String(16), nullable=False),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("reason", sa.Text),
    )
    op.create_index("ix_transitions_instance_id", "transitions", ["instance_id"])


def downgrade() -> None:
    op.drop_table("transitions")
    op.drop_table("instances")
    op.drop_table("pools")
