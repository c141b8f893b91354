"""a DNS record is one per zone: the zone joins dns_records' unique key

Revision ID: 0007
Revises: 0006

A PTR whose reverse zone changes (its segment's prefix changed) is deleted in the old zone
and added in the new one; with the zone outside the key, the row of the new zone could
not be written while the old one was still there. The rows are kept (copied): records made
before vfence marked its names are still its own.
"""

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

COLUMNS = "server, zone, owner, rtype, value"


def _table(name: str, *key: str) -> None:
    op.create_table(
        name,
        sa.Column('id', sa.Integer(), nullable=False),
        sa.Column('server', sa.String(length=64), nullable=False),
        sa.Column('zone', sa.String(length=255), nullable=False),
        sa.Column('owner', sa.String(length=255), nullable=False),
        sa.Column('rtype', sa.String(length=8), nullable=False),
        sa.Column('value', sa.String(length=255), nullable=False),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint(*key),
    )


def _copy_into(key: tuple[str, ...], select: str) -> None:
    _table('dns_records_new', *key)
    op.execute(f"INSERT INTO dns_records_new ({COLUMNS}) {select}")
    op.drop_table('dns_records')
    op.rename_table('dns_records_new', 'dns_records')


def upgrade() -> None:
    _copy_into(('server', 'zone', 'owner', 'rtype', 'value'),
               f"SELECT {COLUMNS} FROM dns_records")


def downgrade() -> None:  # one row per (server, owner, rtype, value): the lowest zone's
    _copy_into(('server', 'owner', 'rtype', 'value'),
               "SELECT server, MIN(zone), owner, rtype, value FROM dns_records "
               "GROUP BY server, owner, rtype, value")
