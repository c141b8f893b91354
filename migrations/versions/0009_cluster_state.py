"""controller cluster: the shared state's version and the cluster-wide LLDP key

Revision ID: 0009
Revises: 0008

One row. ``version`` grows by one with every change a member commits to the shared
state (registry, policy, locations): a member whose copy is older reloads before it
changes anything, and the row's lock serialises changes across members. ``lldp_key``
signs link probes, so any member can check a probe another member's switch sent.
``places`` is the binding machine's state as a cluster member last committed it (JSON:
bindings, standby ports, announced migrations, candidates), so the member that sees a
VM's next frame knows the migration another member prepared.
"""

import os

import sqlalchemy as sa
from alembic import op

revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    table = op.create_table(
        'cluster_state',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('version', sa.BigInteger(), nullable=False),
        sa.Column('lldp_key', sa.String(length=64), nullable=False),
        sa.Column('places', sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.bulk_insert(table, [{'id': 1, 'version': 0, 'lldp_key': os.urandom(32).hex()}])
    # the switches each member reaches (JSON), written with its heartbeat: a switch is
    # given only to a member that reaches it
    op.add_column('cluster_members', sa.Column('reaches', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('cluster_members') as batch:
        batch.drop_column('reaches')
    op.drop_table('cluster_state')
