"""dense VM and segment tags (what flows carry instead of database ids)

Revision ID: 0003
Revises: 0002

Flows carry a VM's tag in metadata bits 16-31 and reg4, a segment's in metadata bits 0-15
and as its conntrack zone: 16 bits each. Database ids only grow, so they cannot be the
tags. Existing rows get 1, 2, 3, ... in id order.
"""

import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None

MAX_TAG = 0xFFFF  # controller.flows.MAX_VM_TAG / MAX_SEGMENT_TAG when this was written


def _backfill(table: str) -> None:
    t = sa.table(table, sa.column('id', sa.Integer), sa.column('tag', sa.Integer))
    conn = op.get_bind()
    ids = list(conn.scalars(sa.select(t.c.id).order_by(t.c.id)))
    if len(ids) > MAX_TAG:
        raise RuntimeError(f"{table}: {len(ids)} rows, but tags are 16 bits (at most "
                           f"{MAX_TAG}); remove rows before upgrading")
    if ids:
        conn.execute(t.update().where(t.c.id == sa.bindparam('b_id'))
                     .values(tag=sa.bindparam('b_tag')),
                     [{'b_id': i, 'b_tag': n} for n, i in enumerate(ids, start=1)])


def upgrade() -> None:
    for table in ('segments', 'vms'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(sa.Column('tag', sa.Integer(), nullable=True))
        _backfill(table)
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.alter_column('tag', existing_type=sa.Integer(), nullable=False)
            batch_op.create_unique_constraint(f'uq_{table}_tag', ['tag'])


def downgrade() -> None:
    for table in ('vms', 'segments'):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_constraint(f'uq_{table}_tag', type_='unique')
            batch_op.drop_column('tag')
