"""Names for every referral source and payer: `v_source_names`, and the referral views named through it.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07

A PractitionerRole is named from its synced Practitioner and Organization (current names, so a renamed
Practitioner renames its roles), else from the displays the role carries (new columns, filled here from the
stored raw resources). A source whose name cannot be found is "unknown (<Type>/…)", never its reference.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Sequence
from types import ModuleType

import sqlalchemy as sa
from alembic import op

from connector.warehouse.sqlviews import create_view, drop_view

revision: str = "0014"
down_revision: str | Sequence[str] | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_PRACTITIONER = "COALESCE(p.name, rs.practitioner_display)"
_ORGANIZATION = "COALESCE(o.name, rs.organization_display)"

# `mappings.referral_source.role_name` in SQL; rs.name covers a role whose displays were never read.
SOURCE_NAMES = f"""
SELECT
    rs.endpoint,
    rs.source_ref,
    rs.resource_type,
    rs.source_type,
    CASE WHEN rs.resource_type <> 'PractitionerRole' THEN rs.name
        WHEN {_PRACTITIONER} IS NOT NULL AND {_ORGANIZATION} IS NOT NULL
            THEN {_PRACTITIONER} || ' (' || {_ORGANIZATION} || ')'
        ELSE COALESCE({_PRACTITIONER}, {_ORGANIZATION}, rs.name)
    END AS name
FROM referral_source rs
LEFT JOIN referral_source p
    ON rs.resource_type = 'PractitionerRole' AND p.endpoint = rs.endpoint
    AND p.source_ref = rs.practitioner_ref AND p.resource_type = 'Practitioner'
LEFT JOIN referral_source o
    ON rs.resource_type = 'PractitionerRole' AND o.endpoint = rs.endpoint
    AND o.source_ref = rs.organization_ref AND o.resource_type = 'Organization'
"""


def _referral_views() -> ModuleType:
    return importlib.import_module("connector.warehouse.migrations.versions.0002_referral_facts")


def _display(ref: object) -> str | None:
    if isinstance(ref, dict) and isinstance(ref.get("display"), str):
        return ref["display"].strip() or None
    return None


def _fill_role_displays() -> None:
    """The displays of the PractitionerRoles already stored, read from their raw JSON (contained roles keep
    theirs in the referral's JSON and are filled when that referral is synced again)."""
    conn = op.get_bind()
    rows = conn.execute(
        sa.text(
            "SELECT s.endpoint, s.resource_id, r.payload FROM referral_source s JOIN raw_resource r ON "
            "r.endpoint = s.endpoint AND r.resource_type = s.resource_type AND r.resource_id = s.resource_id "
            "WHERE s.resource_type = 'PractitionerRole'"
        )
    )
    update = sa.text(
        "UPDATE referral_source SET practitioner_display = :p, organization_display = :o "
        "WHERE endpoint = :endpoint AND resource_type = 'PractitionerRole' AND resource_id = :rid"
    )
    for endpoint, rid, payload in rows.all():
        if isinstance(payload, str | bytes):  # SQLite hands JSON back as text
            payload = json.loads(payload)
        if not isinstance(payload, dict):
            continue
        conn.execute(
            update,
            {
                "p": _display(payload.get("practitioner")),
                "o": _display(payload.get("organization")),
                "endpoint": endpoint,
                "rid": rid,
            },
        )


def upgrade() -> None:
    with op.batch_alter_table("referral_source") as batch:
        batch.add_column(sa.Column("practitioner_display", sa.String(), nullable=True))
        batch.add_column(sa.Column("organization_display", sa.String(), nullable=True))
    _fill_role_displays()
    create_view("v_source_names", SOURCE_NAMES)
    for name, sql in _referral_views().view_sql(acknowledgments=True, names=True).items():
        create_view(name, sql)


def downgrade() -> None:
    for name, sql in _referral_views().view_sql(acknowledgments=True).items():
        create_view(name, sql)
    drop_view("v_source_names")
    with op.batch_alter_table("referral_source") as batch:
        batch.drop_column("organization_display")
        batch.drop_column("practitioner_display")
