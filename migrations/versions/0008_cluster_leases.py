"""controller cluster: members (heartbeats) and switch mastership leases with terms

Revision ID: 0008
Revises: 0007

Every member of a cluster (``vfence serve --cluster``) writes its heartbeat; each switch
has at most one lease holder, whose term becomes the OpenFlow role request's generation id.
"""

import sqlalchemy as sa
from alembic import op

revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'cluster_members',
        sa.Column('name', sa.String(length=128), nullable=False),
        sa.Column('advertise', sa.String(length=255), nullable=False),
        sa.Column('heartbeat', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )
    op.create_table(
        'switch_leases',
        sa.Column('dpid', sa.String(length=16), nullable=False),
        sa.Column('member', sa.String(length=128), nullable=False),
        sa.Column('term', sa.BigInteger(), nullable=False),
        sa.Column('expires', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('dpid'),
    )


def downgrade() -> None:
    op.drop_table('switch_leases')
    op.drop_table('cluster_members')
