"""Initial warehouse schema: raw resources, bookkeeping (sync state, runs, dead letters) and referral.

Revision ID: 0001
Revises:
Create Date: 2026-01-01

Types are spelled out here instead of imported from the models, so this revision keeps creating the same
schema when the models move on.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type as _json
from connector.warehouse.migrations.columns import resource_key_columns
from connector.warehouse.migrations.columns import timestamp as _ts

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "raw_resource",
        *resource_key_columns(),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("deleted", sa.Boolean(), server_default=sa.false(), nullable=False),
        sa.Column("fetched_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_raw_resource"),
    )
    op.create_index("ix_raw_resource_last_updated", "raw_resource", ["last_updated"])

    op.create_table(
        "sync_state",
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("watermark", sa.String(), nullable=True),
        sa.Column("watermark_at", _ts(), nullable=True),
        sa.Column("mode", sa.String(), nullable=True),
        sa.Column("updated_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", name="pk_sync_state"),
    )

    op.create_table(
        "sync_run",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(), nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("started_at", _ts(), nullable=False),
        sa.Column("finished_at", _ts(), nullable=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("fetched", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("loaded", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("rejected", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_sync_run"),
    )
    op.create_index("ix_sync_run_run_id", "sync_run", ["run_id"])
    op.create_index(
        "ix_sync_run_endpoint_resource_type_started_at",
        "sync_run",
        ["endpoint", "resource_type", "started_at"],
    )

    op.create_table(
        "dead_letter",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=True),
        sa.Column("payload_hash", sa.String(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("payload", _json(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("1"), nullable=False),
        sa.Column("first_seen_at", _ts(), nullable=False),
        sa.Column("last_seen_at", _ts(), nullable=False),
        sa.Column("resolved_at", _ts(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letter"),
        sa.UniqueConstraint(
            "endpoint",
            "resource_type",
            "payload_hash",
            name="uq_dead_letter_endpoint_resource_type_payload_hash",
        ),
    )
    op.create_index("ix_dead_letter_resolved_at", "dead_letter", ["resolved_at"])

    op.create_table(
        "referral",
        *resource_key_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("intent", sa.String(), nullable=True),
        sa.Column("priority", sa.String(), nullable=True),
        sa.Column("category_code", sa.String(), nullable=True),
        sa.Column("authored_on", _ts(), nullable=True),
        sa.Column("requested_start", _ts(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("requester_ref", sa.String(), nullable=True),
        sa.Column("requester_display", sa.String(), nullable=True),
        sa.Column("service_system", sa.String(), nullable=True),
        sa.Column("service_code", sa.String(), nullable=True),
        sa.Column("service_display", sa.String(), nullable=True),
        sa.Column("reason_codes", _json(), nullable=False),
        sa.Column("coverage_ref", sa.String(), nullable=True),
        sa.Column("coverage_refs", _json(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_referral"),
    )
    op.create_index("ix_referral_authored_on", "referral", ["authored_on"])
    op.create_index("ix_referral_requester_ref", "referral", ["requester_ref"])


def downgrade() -> None:
    op.drop_table("referral")
    op.drop_table("dead_letter")
    op.drop_table("sync_run")
    op.drop_table("sync_state")
    op.drop_table("raw_resource")
