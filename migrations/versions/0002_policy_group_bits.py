"""policy documents, group bits, convergence time

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('policies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('applied_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('document', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.add_column(sa.Column('bit', sa.Integer(), nullable=True))
        batch_op.create_unique_constraint('uq_groups_bit', ['bit'])
    # groups that exist already get bits in creation order
    op.execute('UPDATE groups SET bit = (SELECT count(*) FROM groups g2 WHERE g2.id < groups.id)')

    with op.batch_alter_table('location_history', schema=None) as batch_op:
        batch_op.add_column(sa.Column('convergence_ms', sa.Float(), nullable=True))



def downgrade() -> None:
    with op.batch_alter_table('location_history', schema=None) as batch_op:
        batch_op.drop_column('convergence_ms')

    with op.batch_alter_table('groups', schema=None) as batch_op:
        batch_op.drop_constraint('uq_groups_bit', type_='unique')
        batch_op.drop_column('bit')

    op.drop_table('policies')
