"""each router's number, kept while a policy names it

Revision ID: 0005
Revises: 0004

A router's conntrack zone and its flows' cookies carry its number. It was the router's
index in the document, so removing or reordering one router moved every later one to
another zone (their routed connections lost their conntrack state). Now the registry
numbers routers. The routers of the newest stored document keep the numbers they had:
their index, in document order.
"""

import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    routers = op.create_table(
        'routers',
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('name'),
        sa.UniqueConstraint('number'),
    )
    policies = sa.table('policies', sa.column('id', sa.Integer),
                        sa.column('document', sa.JSON))
    newest = op.get_bind().execute(
        sa.select(policies.c.document).order_by(policies.c.id.desc()).limit(1)).scalar()
    names = [r.get('name') for r in (newest or {}).get('routers') or []
             if isinstance(r, dict)]
    if names:
        op.bulk_insert(routers, [{'name': n, 'number': i} for i, n in enumerate(names)])


def downgrade() -> None:
    op.drop_table('routers')
