"""the leader lease row and fencing epoch — fleet-replicas.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one row per pool: who leads, the fencing epoch (one up per takeover), until when
    op.create_table(
        "leader",
        sa.Column("pool", sa.String(64), primary_key=True),
        sa.Column("holder", sa.String(128)),
        sa.Column("epoch", sa.Integer, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("since", sa.Float, nullable=False),
    )
    # every replica's heartbeat (for `pool status`; leadership lives in `leader` only)
    op.create_table(
        "replicas",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("listen", sa.String(255)),
        sa.Column("started_at", sa.Float, nullable=False),
        sa.Column("seen_at", sa.Float, nullable=False),
    )
    op.create_index("ix_replicas_pool", "replicas", ["pool"])
    # Vast's per-instance key (create answer), handed to the dead-man's switch at provision
    # time by whichever replica leads then; a secret like the lease keys: never logged
    op.create_table(
        "instance_keys",
        sa.Column("instance_id", sa.String(32), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("api_key", sa.Text, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("instance_keys")
    op.drop_table("replicas")
    op.drop_table("leader")
