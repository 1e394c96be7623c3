"""`v_referral_facts`: one row per referral with its source, milestones and days between them.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07

The row-level view the referral views aggregate: the report counts its KPIs, weekly charts and funnel
from it for exactly the days of its period, so every referral number on the page counts the same
referrals. It holds no patient reference and no resource id.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from connector.warehouse.sqlviews import create_view, drop_view

revision: str = "0015"
down_revision: str | Sequence[str] | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    referral_views = importlib.import_module("connector.warehouse.migrations.versions.0002_referral_facts")
    create_view("v_referral_facts", referral_views.facts_sql(acknowledgments=True, names=True))


def downgrade() -> None:
    drop_view("v_referral_facts")
