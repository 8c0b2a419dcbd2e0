"""an index for the lease take: a pool's ready rows, oldest first — fleet-replicas.

Revision ID: 0005
Revises: 0004
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # the take reads `pool = ? AND state = 'ready' ORDER BY state_since, id LIMIT n`: without
    # this it sorts every row of the table at each lease (0.7 ms at 1,000 rows on PostgreSQL)
    op.create_index(
        "ix_instances_pool_state_since", "instances", ["pool", "state", "state_since", "id"]
    )


def downgrade() -> None:
    op.drop_index("ix_instances_pool_state_since", "instances")
