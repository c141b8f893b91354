"""the DNS records the server took from vfence

Revision ID: 0006
Revises: 0005

DNS follows the VMs (RFC 2136 updates). What the server acknowledged is kept here, so
what it has not taken yet (the server was down) survives a restart and is retried.
"""

import sqlalchemy as sa
from alembic import op

revision = '0006'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'dns_records',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('server', sa.String(length=64), nullable=False),
        sa.Column('zone', sa.String(length=255), nullable=False),
        sa.Column('owner', sa.String(length=255), nullable=False),
        sa.Column('rtype', sa.String(length=8), nullable=False),
        sa.Column('value', sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('server', 'owner', 'rtype', 'value'),
    )


def downgrade() -> None:
    op.drop_table('dns_records')
