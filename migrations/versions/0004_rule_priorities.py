"""each rule's priority, kept across policy edits

Revision ID: 0004
Revises: 0003

A rule keeps its flows' priority when other rules are added, removed or moved around it,
so an edit rewrites only the flows of the rules it changes. The priorities are stored
with each applied document; a document stored before this has none, and its rules get
fresh, evenly spread priorities the first time the controller starts after the upgrade.
"""

import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('policies') as batch:
        batch.add_column(sa.Column('rule_priorities', sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('policies') as batch:
        batch.drop_column('rule_priorities')
