"""How a visit found its referral (`basedOn` or `inferred`), and the first inference over what is stored.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | Sequence[str] | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("visit") as batch:
        batch.add_column(sa.Column("referral_link", sa.String(), nullable=True))
    op.execute("UPDATE visit SET referral_link = 'basedOn' WHERE referral_ref IS NOT NULL")
    # Visits stored before were never inferred: derive every endpoint's with the default window now (a
    # sync re-derives the patients it touches with the endpoint's own window).
    from connector.warehouse.visit_links import derive_visit_links

    conn = op.get_bind()
    for endpoint in conn.scalars(sa.text("SELECT DISTINCT endpoint FROM visit")).all():
        derive_visit_links(conn, endpoint)


def downgrade() -> None:
    # Inferred links and kinds were never the mapper's: undo them with the column.
    op.execute("UPDATE visit SET referral_ref = NULL WHERE referral_link = 'inferred'")
    op.execute("UPDATE visit SET kind = 'other', kind_source = NULL WHERE kind_source = 'inferred'")
    with op.batch_alter_table("visit") as batch:
        batch.drop_column("referral_link")
