"""The therapy episode: `episode`, `care_plan`, `goal`, `clinical_note` (codes, dates, statuses, references).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-08
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type, resource_key_columns
from connector.warehouse.migrations.columns import timestamp as _ts

revision: str = "0016"
down_revision: str | Sequence[str] | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _linked() -> list[sa.Column[object]]:
    return [
        sa.Column("discipline", sa.String(), nullable=False),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("referral_ref", sa.String(), nullable=True),
        sa.Column("referral_link", sa.String(), nullable=True),
    ]


def _table(name: str, *columns: sa.Column[object]) -> None:
    op.create_table(
        name,
        *resource_key_columns(),
        *_linked(),
        *columns,
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name=f"pk_{name}"),
    )
    op.create_index(f"ix_{name}_endpoint_referral_ref", name, ["endpoint", "referral_ref"])


def upgrade() -> None:
    _table(
        "episode",
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("care_manager_ref", sa.String(), nullable=True),
        sa.Column("managing_organization_ref", sa.String(), nullable=True),
        sa.Column("period_start", _ts(), nullable=True),
        sa.Column("period_end", _ts(), nullable=True),
    )
    _table(
        "care_plan",
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("intent", sa.String(), nullable=True),
        sa.Column("encounter_ref", sa.String(), nullable=True),
        sa.Column("created_at", _ts(), nullable=True),
        sa.Column("period_start", _ts(), nullable=True),
        sa.Column("period_end", _ts(), nullable=True),
        sa.Column("visits_per_week", sa.Float(), nullable=True),
        sa.Column("plan_weeks", sa.Float(), nullable=True),
        sa.Column("activities", sa.Integer(), nullable=False),
        sa.Column("goal_refs", json_type(), nullable=False),
    )
    _table(
        "goal",
        sa.Column("lifecycle_status", sa.String(), nullable=True),
        sa.Column("achievement_status", sa.String(), nullable=True),
        sa.Column("description", sa.String(), nullable=True),
        sa.Column("description_code", sa.String(), nullable=True),
        sa.Column("start_date", _ts(), nullable=True),
        sa.Column("target_date", _ts(), nullable=True),
        sa.Column("status_date", _ts(), nullable=True),
    )
    _table(
        "clinical_note",
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("doc_status", sa.String(), nullable=True),
        sa.Column("type_system", sa.String(), nullable=True),
        sa.Column("type_code", sa.String(), nullable=True),
        sa.Column("note_kind", sa.String(), nullable=False),
        sa.Column("author_ref", sa.String(), nullable=True),
        sa.Column("encounter_ref", sa.String(), nullable=True),
        sa.Column("note_date", _ts(), nullable=True),
    )


def downgrade() -> None:
    for name in ("clinical_note", "goal", "care_plan", "episode"):
        op.drop_index(f"ix_{name}_endpoint_referral_ref", table_name=name)
        op.drop_table(name)
