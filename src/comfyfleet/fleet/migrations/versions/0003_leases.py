"""leases, lease tokens and standby keys — fleet-api.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # one row per key ever attached: standby (waiting for a lease), leased, removed
    op.create_table(
        "lease_keys",
        sa.Column("lease_id", sa.String(32), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("private_key", sa.Text, nullable=False),
        sa.Column("public_line", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_index("ix_lease_keys_instance_id", "lease_keys", ["instance_id"])
    op.create_table(
        "leases",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.String(32), nullable=False),
        sa.Column("token_sha256", sa.String(64), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("ended_at", sa.Float),
        sa.Column("ended_reason", sa.Text),
    )
    op.create_index("ix_leases_pool_state", "leases", ["pool", "state"])


def downgrade() -> None:
    op.drop_table("leases")
    op.drop_table("lease_keys")
