"""Referral facts: referral sources, visits, intake checklist, referral views.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

Types are spelled out here instead of imported from the models, so this revision keeps creating the same
schema when the models move on. The view SQL is written once per dialect with `sqlviews` helpers.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse import sqlviews
from connector.warehouse.migrations.columns import json_type as _json
from connector.warehouse.migrations.columns import resource_key_columns
from connector.warehouse.migrations.columns import timestamp as _ts

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

VIEWS = ("v_referrals_weekly", "v_referral_funnel", "v_referral_sources")
DIALECTS = ("sqlite", "postgresql")

# Visit statuses that mean an evaluation was on the calendar. A no-show was scheduled (and not attended),
# so it counts here: leaving it out would make the attendance rate look better than it is.
_SCHEDULED = "('booked', 'fulfilled', 'noshow')"


def _day(expr: str, d: str) -> str:
    """The UTC calendar day of a timestamp, still usable by `days_between`."""
    if d == "sqlite":
        return f"date({expr})"
    return f"date_trunc('day', ({expr}) AT TIME ZONE 'UTC')"


def _days(later: str, earlier: str, d: str) -> str:
    """Whole calendar days from `earlier` to `later` (NULL when either is NULL)."""
    return sqlviews.days_between(_day(later, d), _day(earlier, d), d)


def _source_columns(names: bool) -> tuple[str, str]:
    """(SELECT columns, join) of the referral's source.

    Without `names` (this revision): the `referral_source` row's own name, else the requester's display, else
    its reference. With `names` (migration 0014, which adds the `v_source_names` view): the resolved name (a
    PractitionerRole's Practitioner and Organization), else the display; a source with neither is the
    one bucket "unknown (<Type>/…)" per type with an empty `source_ref`, never a raw reference.
    """
    fallback = "CASE WHEN r.source_type = 'self' THEN 'self' ELSE 'unknown' END"
    if not names:
        columns = f"""r.source_ref,
        COALESCE(rs.name, r.requester_display, r.source_ref, {fallback}) AS source,
        COALESCE(rs.source_type, r.source_type, 'other') AS source_type,"""
        join = "LEFT JOIN referral_source rs ON rs.endpoint = r.endpoint AND rs.source_ref = r.source_ref"
        return columns, join
    from connector.warehouse.names import unknown_name_sql  # only the later revision needs it

    named = "COALESCE(rs.name, r.requester_display)"
    columns = f"""CASE WHEN {named} IS NOT NULL THEN r.source_ref END AS source_ref,
        COALESCE({named}, {unknown_name_sql("r.source_ref")}, {fallback}) AS source,
        CASE WHEN {named} IS NULL AND r.source_ref IS NOT NULL THEN 'unknown'
            ELSE COALESCE(rs.source_type, r.source_type, 'other') END AS source_type,"""
    join = "LEFT JOIN v_source_names rs ON rs.endpoint = r.endpoint AND rs.source_ref = r.source_ref"
    return columns, join


def _facts(d: str, acknowledgments: bool, names: bool = False) -> str:
    """WITH clause shared by the views: `facts` has one row per referral with its source and milestones.

    - received: `authored_on`, else `last_updated`; entered-in-error referrals are left out.
    - source: the joined `referral_source` name, else the requester's display, else its reference;
      `self` for self-referrals and `unknown` without a requester (never dropped).
    - evaluation visits: `visit.kind = 'evaluation'`, or an Encounter of kind other whose Appointment is
      one; an Encounter reaches its referral through `basedOn` or through its Appointment.
    - scheduled: an evaluation visit booked, fulfilled or no-show; scheduled_at is when it was booked
      (`Appointment.created`). attended: an evaluation visit fulfilled; attended_at is its start.
    """
    if acknowledgments:
        acknowledged_at = "ack.acknowledged_at"
        ack_join = (
            "LEFT JOIN acknowledgment ack ON ack.endpoint = r.endpoint AND ack.referral_id = r.resource_id"
        )
    else:
        acknowledged_at = "CAST(NULL AS TEXT)" if d == "sqlite" else "CAST(NULL AS timestamptz)"
        ack_join = ""
    source_columns, source_join = _source_columns(names)
    return f"""
WITH ref AS (
    SELECT
        r.endpoint,
        r.resource_id,
        'ServiceRequest/' || r.resource_id AS referral_ref,
        COALESCE(r.authored_on, r.last_updated) AS received_at,
        COALESCE(r.discipline, 'other') AS discipline,
        CASE WHEN r.intake_complete THEN 1 ELSE 0 END AS intake_complete,
        {source_columns}
        -- Acknowledgments (push-back) join here: the `acknowledgment` table comes with a later
        -- migration, which redefines the three views with view_sql(acknowledgments=True); that adds
        --   LEFT JOIN acknowledgment ack ON ack.endpoint = r.endpoint AND ack.referral_id = r.resource_id
        -- and takes ack.acknowledged_at instead of NULL. `acknowledged` and the acknowledgment medians
        -- of every view follow from this one column.
        {acknowledged_at} AS acknowledged_at
    FROM referral r
    {source_join}
    {ack_join}
    WHERE r.status IS NULL OR r.status <> 'entered-in-error'
),
ev AS (
    SELECT
        v.endpoint,
        COALESCE(v.referral_ref, a.referral_ref) AS referral_ref,
        v.status,
        v.start_at,
        COALESCE(v.booked_at, a.booked_at) AS booked_at
    FROM visit v
    LEFT JOIN visit a
        ON a.endpoint = v.endpoint
        AND a.resource_type = 'Appointment'
        AND v.appointment_ref = 'Appointment/' || a.resource_id
    WHERE v.kind = 'evaluation' OR (v.kind = 'other' AND a.kind = 'evaluation')
),
milestones AS (
    SELECT
        endpoint,
        referral_ref,
        MAX(CASE WHEN status IN {_SCHEDULED} THEN 1 ELSE 0 END) AS scheduled,
        MIN(CASE WHEN status IN {_SCHEDULED} THEN booked_at END) AS scheduled_at,
        MAX(CASE WHEN status = 'fulfilled' THEN 1 ELSE 0 END) AS attended,
        MIN(CASE WHEN status = 'fulfilled' THEN start_at END) AS attended_at
    FROM ev
    WHERE referral_ref IS NOT NULL
    GROUP BY endpoint, referral_ref
),
facts AS (
    SELECT
        ref.endpoint,
        ref.source_ref,
        ref.source,
        ref.source_type,
        ref.discipline,
        ref.received_at,
        ref.intake_complete,
        ref.acknowledged_at,
        {sqlviews.week_start("ref.received_at", d)} AS week,
        {sqlviews.month_start("ref.received_at", d)} AS month,
        COALESCE(m.scheduled, 0) AS scheduled,
        COALESCE(m.attended, 0) AS attended,
        {_days("ref.acknowledged_at", "ref.received_at", d)} AS days_received_to_acknowledged,
        {_days("m.scheduled_at", "ref.acknowledged_at", d)} AS days_acknowledged_to_scheduled,
        {_days("m.scheduled_at", "ref.received_at", d)} AS days_received_to_scheduled,
        {_days("m.attended_at", "m.scheduled_at", d)} AS days_scheduled_to_attended,
        {_days("m.attended_at", "ref.received_at", d)} AS days_received_to_attended
    FROM ref
    LEFT JOIN milestones m ON m.endpoint = ref.endpoint AND m.referral_ref = ref.referral_ref
)
"""


def _weekly(d: str, acknowledgments: bool, names: bool) -> str:
    return f"""{_facts(d, acknowledgments, names)}
SELECT
    endpoint,
    week,
    source_ref,
    source,
    source_type,
    discipline,
    COUNT(*) AS referrals,
    SUM(intake_complete) AS intake_complete,
    SUM(CASE WHEN acknowledged_at IS NOT NULL THEN 1 ELSE 0 END) AS acknowledged,
    SUM(scheduled) AS evaluations_scheduled,
    SUM(attended) AS evaluations_attended
FROM facts
WHERE received_at IS NOT NULL
GROUP BY endpoint, week, source_ref, source, source_type, discipline
"""


_FUNNEL_STEPS = (
    "received_to_acknowledged",
    "acknowledged_to_scheduled",
    "received_to_scheduled",
    "scheduled_to_attended",
    "received_to_attended",
)


def _funnel(d: str, acknowledgments: bool, names: bool) -> str:
    medians = "".join(f",\n    m{n}.median AS median_days_{step}" for n, step in enumerate(_FUNNEL_STEPS))
    groups = ["endpoint", "month"]
    joins = "".join(
        f"\nLEFT JOIN {sqlviews.percentile('facts', groups, f'days_{step}', 0.5, name='median')}"
        f" m{n} ON m{n}.endpoint = c.endpoint AND m{n}.month = c.month"
        for n, step in enumerate(_FUNNEL_STEPS)
    )
    return f"""{_facts(d, acknowledgments, names)}
SELECT
    c.endpoint,
    c.month,
    c.received,
    c.acknowledged,
    c.evaluation_scheduled,
    c.evaluation_attended{medians}
FROM (
    SELECT
        endpoint,
        month,
        COUNT(*) AS received,
        SUM(CASE WHEN acknowledged_at IS NOT NULL THEN 1 ELSE 0 END) AS acknowledged,
        SUM(scheduled) AS evaluation_scheduled,
        SUM(attended) AS evaluation_attended
    FROM facts
    WHERE received_at IS NOT NULL
    GROUP BY endpoint, month
) c{joins}
"""


def _sources(d: str, acknowledgments: bool, names: bool) -> str:
    now = sqlviews.now(d)
    last_90 = sqlviews.shift_days(now, -90, d)
    last_180 = sqlviews.shift_days(now, -180, d)
    return f"""{_facts(d, acknowledgments, names)}
SELECT
    s.endpoint,
    s.source_ref,
    s.source,
    s.source_type,
    s.referrals_last_90_days,
    s.referrals_prior_90_days,
    s.referrals_last_90_days - s.referrals_prior_90_days AS trend,
    CASE WHEN s.referrals_prior_90_days > 0 THEN
        ROUND(100.0 * (s.referrals_last_90_days - s.referrals_prior_90_days) / s.referrals_prior_90_days, 1)
    END AS trend_pct,
    s.evaluations_attended_last_90_days,
    CASE WHEN s.referrals_last_90_days > 0 THEN
        ROUND(1.0 * s.evaluations_attended_last_90_days / s.referrals_last_90_days, 4)
    END AS conversion_rate,
    s.referrals_last_90_days - s.intake_complete_last_90_days AS incomplete_intakes_last_90_days,
    CASE WHEN s.referrals_last_90_days > 0 THEN
        ROUND(1.0 * (s.referrals_last_90_days - s.intake_complete_last_90_days) / s.referrals_last_90_days, 4)
    END AS incomplete_intake_share
FROM (
    SELECT
        endpoint,
        source_ref,
        source,
        source_type,
        SUM(CASE WHEN received_at > {last_90} THEN 1 ELSE 0 END) AS referrals_last_90_days,
        SUM(CASE WHEN received_at <= {last_90} THEN 1 ELSE 0 END) AS referrals_prior_90_days,
        SUM(CASE WHEN received_at > {last_90} THEN attended ELSE 0 END) AS evaluations_attended_last_90_days,
        SUM(CASE WHEN received_at > {last_90} THEN intake_complete ELSE 0 END) AS intake_complete_last_90_days
    FROM facts
    WHERE received_at > {last_180} AND received_at <= {now}
    GROUP BY endpoint, source_ref, source, source_type
) s
"""


_FACT_COLUMNS = (
    "endpoint, source_ref, source, source_type, discipline, received_at, week, month, intake_complete, "
    "acknowledged_at, scheduled, attended, "
    + ", ".join(
        f"days_{step}"
        for step in (
            "received_to_acknowledged",
            "acknowledged_to_scheduled",
            "received_to_scheduled",
            "scheduled_to_attended",
            "received_to_attended",
        )
    )
)


def facts_with(d: str, *, acknowledgments: bool, names: bool) -> str:
    """The WITH clause of the referral views (`ref`, `ev`, `milestones`, `facts`), for later views that
    add their own CTEs to it (migration 0017)."""
    return _facts(d, acknowledgments, names)


def facts_sql(*, acknowledgments: bool, names: bool) -> dict[str, str]:
    """Dialect -> SELECT of `v_referral_facts` (migration 0015): the views' `facts`, one row per referral."""
    return {d: f"{_facts(d, acknowledgments, names)}\nSELECT {_FACT_COLUMNS} FROM facts" for d in DIALECTS}


def view_sql(*, acknowledgments: bool = False, names: bool = False) -> dict[str, dict[str, str]]:
    """View name -> dialect -> SELECT.

    With `acknowledgments`, the views count acknowledged referrals from the `acknowledgment` table (which
    this revision does not have): for the later migration that redefines them, e.g.
    `importlib.import_module("connector.warehouse.migrations.versions.0002_referral_facts").view_sql(...)`.
    With `names`, sources are named through `v_source_names` (migration 0014).
    """
    builders = {"v_referrals_weekly": _weekly, "v_referral_funnel": _funnel, "v_referral_sources": _sources}
    return {name: {d: build(d, acknowledgments, names) for d in DIALECTS} for name, build in builders.items()}


def upgrade() -> None:
    with op.batch_alter_table("referral") as batch:
        batch.add_column(sa.Column("reason_refs", _json(), nullable=True))
        batch.add_column(sa.Column("discipline", sa.String(), nullable=True))
        batch.add_column(sa.Column("performer_ref", sa.String(), nullable=True))
        batch.add_column(sa.Column("based_on_refs", _json(), nullable=True))
        batch.add_column(sa.Column("replaces_refs", _json(), nullable=True))
        batch.add_column(sa.Column("source_ref", sa.String(), nullable=True))
        batch.add_column(sa.Column("source_type", sa.String(), nullable=True))
        batch.add_column(sa.Column("intake_missing", _json(), nullable=True))
        batch.add_column(sa.Column("intake_complete", sa.Boolean(), nullable=True))
        batch.create_index("ix_referral_source_ref", ["source_ref"])

    op.create_table(
        "referral_source",
        *resource_key_columns(),
        sa.Column("source_ref", sa.String(), nullable=False),
        sa.Column("name", sa.String(), nullable=True),
        sa.Column("source_type", sa.String(), nullable=False),
        sa.Column("npi", sa.String(), nullable=True),
        sa.Column("practitioner_ref", sa.String(), nullable=True),
        sa.Column("organization_ref", sa.String(), nullable=True),
        sa.Column("type_codes", _json(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=True),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_referral_source"),
    )
    op.create_index("ix_referral_source_endpoint_source_ref", "referral_source", ["endpoint", "source_ref"])

    op.create_table(
        "visit",
        *resource_key_columns(),
        sa.Column("referral_ref", sa.String(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("discipline", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("fhir_status", sa.String(), nullable=True),
        sa.Column("start_at", _ts(), nullable=True),
        sa.Column("booked_at", _ts(), nullable=True),
        sa.Column("appointment_ref", sa.String(), nullable=True),
        sa.Column("type_codes", _json(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_visit"),
    )
    op.create_index("ix_visit_endpoint_referral_ref", "visit", ["endpoint", "referral_ref"])
    op.create_index("ix_visit_endpoint_patient_ref", "visit", ["endpoint", "patient_ref"])
    op.create_index("ix_visit_start_at", "visit", ["start_at"])

    for name, sql in view_sql().items():
        sqlviews.create_view(name, sql)


def downgrade() -> None:
    for name in reversed(VIEWS):
        sqlviews.drop_view(name)
    op.drop_table("visit")
    op.drop_table("referral_source")
    with op.batch_alter_table("referral") as batch:
        batch.drop_index("ix_referral_source_ref")
        for column in (
            "intake_complete",
            "intake_missing",
            "source_type",
            "source_ref",
            "replaces_refs",
            "based_on_refs",
            "performer_ref",
            "discipline",
            "reason_refs",
        ):
            batch.drop_column(column)
