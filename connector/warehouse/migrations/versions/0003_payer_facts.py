"""Payer facts: eligibility, eligibility checks, prior authorizations and their views.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23

Types are spelled out here (not imported from the models) so this revision keeps creating the same schema.
Views are plain SQL per dialect (see `connector.warehouse.sqlviews`), documented in docs/warehouse.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type as _json
from connector.warehouse.migrations.columns import resource_key_columns
from connector.warehouse.migrations.columns import timestamp as _ts
from connector.warehouse.sqlviews import (
    create_view,
    days_between,
    drop_view,
    month_start,
    now,
    percentile,
    shift_days,
)

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIALECTS = ("sqlite", "postgresql")
VIEWS = (
    "v_eligibility",
    "prior_authorization",
    "v_authorization_turnaround",
    "v_payer_mix",
    "v_eligibility_before_first_visit",
)
#: Decisions that end the wait for the payer (turnaround is measured to them).
DECIDED_SQL = "('approved', 'modified', 'partial', 'denied', 'not_required')"
APPROVED_SQL = "('approved', 'modified', 'partial')"
NOT_IN_ERROR = "(status IS NULL OR status <> 'entered-in-error')"


def _day(expr: str, d: str) -> str:
    """The UTC calendar day of a timestamp."""
    if d == "sqlite":
        return f"date({expr})"
    return f"CAST(({expr}) AT TIME ZONE 'UTC' AS date)"


def _v_eligibility(d: str) -> str:
    # The latest check per coverage (by response date, then server version) joined onto each Coverage.
    return f"""
SELECT e.endpoint, e.resource_type, e.resource_id, e.version_id, e.last_updated, e.status, e.type_code,
  e.patient_ref, e.subscriber_id_hash, e.subscriber_id, e.relationship, e.payer_key, e.payor_ref,
  e.payor_type, e.payor_display, e.payor_identifier, e.plan_value, e.plan_name, e.group_value,
  e.group_name, e.network, e.coverage_order, e.period_start, e.period_end,
  c.resource_id AS last_check_id, c.verified_at AS last_verified_at, c.outcome AS last_check_outcome,
  c.inforce AS last_inforce, c.authorization_required AS last_authorization_required
FROM eligibility e
LEFT JOIN (
  SELECT endpoint, coverage_ref, resource_id, verified_at, outcome, inforce, authorization_required,
    ROW_NUMBER() OVER (PARTITION BY endpoint, coverage_ref
      ORDER BY verified_at DESC, last_updated IS NULL, last_updated DESC, resource_id DESC) AS rn
  FROM eligibility_check
  WHERE coverage_ref IS NOT NULL AND {NOT_IN_ERROR}
) c ON c.endpoint = e.endpoint AND c.coverage_ref = 'Coverage/' || e.resource_id AND c.rn = 1
"""


def _prior_authorization(d: str) -> str:
    # One row per request with its latest response, plus responses whose request is not (yet) here.
    # The latest response per request decides: a pended one is replaced when the final one arrives.
    return f"""
WITH latest AS (
  SELECT * FROM (
    SELECT r.*, ROW_NUMBER() OVER (
      PARTITION BY r.endpoint, COALESCE(r.request_ref, 'ClaimResponse/' || r.resource_id)
      ORDER BY r.responded_at DESC, r.last_updated IS NULL, r.last_updated DESC, r.resource_id DESC) AS rn
    FROM prior_auth_response r WHERE {NOT_IN_ERROR}
  ) ranked WHERE rn = 1
), pairs AS (
  SELECT q.endpoint, q.resource_id AS claim_id, l.resource_id AS response_id,
    q.status AS request_status, l.status AS response_status, l.outcome, l.decision AS response_decision,
    COALESCE(q.patient_ref, l.patient_ref) AS patient_ref,
    COALESCE(q.coverage_ref, l.coverage_ref) AS coverage_ref, q.referral_ref,
    q.payer_key AS request_payer, q.insurer_display AS request_payer_display,
    l.payer_key AS response_payer, l.insurer_display AS response_payer_display,
    q.requested_at, l.responded_at, l.pre_auth_ref, l.pre_auth_start, l.pre_auth_end,
    q.items_requested, q.units_requested, l.items_decided, l.items_approved AS response_items_approved
  FROM prior_auth_request q
  LEFT JOIN latest l ON l.endpoint = q.endpoint AND l.request_ref = 'Claim/' || q.resource_id
  WHERE (q.status IS NULL OR q.status <> 'entered-in-error')
  UNION ALL
  SELECT l.endpoint, NULL, l.resource_id, NULL, l.status, l.outcome, l.decision, l.patient_ref,
    l.coverage_ref, NULL, NULL, NULL, l.payer_key, l.insurer_display, NULL, l.responded_at, l.pre_auth_ref,
    l.pre_auth_start, l.pre_auth_end, NULL, NULL, l.items_decided, l.items_approved
  FROM latest l
  WHERE NOT EXISTS (
    SELECT 1 FROM prior_auth_request q
    WHERE q.endpoint = l.endpoint AND l.request_ref = 'Claim/' || q.resource_id
  )
), decided AS (
  SELECT p.*,
    CASE WHEN p.response_id IS NOT NULL THEN p.response_decision
         WHEN p.request_status = 'cancelled' THEN 'cancelled'
         ELSE 'pending' END AS decision
  FROM pairs p
)
SELECT x.endpoint, x.claim_id, x.response_id, x.patient_ref, x.coverage_ref, x.referral_ref,
  COALESCE(x.request_payer, cov.payer_key, x.response_payer) AS payer_key,
  COALESCE(x.request_payer_display, cov.payor_display, x.response_payer_display) AS payer_display,
  x.request_status, x.response_status, x.outcome, x.decision, x.requested_at, x.responded_at,
  CASE WHEN x.decision IN {DECIDED_SQL} THEN x.responded_at END AS decided_at,
  CASE WHEN x.decision IN {DECIDED_SQL} THEN {days_between("x.responded_at", "x.requested_at", d)} END
    AS turnaround_days,
  x.pre_auth_ref, x.pre_auth_start, x.pre_auth_end, x.items_requested, x.units_requested,
  CASE WHEN x.items_decided > 0 THEN x.response_items_approved
       WHEN x.decision IN ('approved', 'modified') THEN x.items_requested
       WHEN x.decision = 'denied' THEN 0 END AS items_approved,
  CASE WHEN x.items_decided > 0 AND x.response_items_approved = 0 THEN 0
       WHEN x.items_decided > 0 THEN (
         SELECT SUM(COALESCE(ri.units_authorized,
                             CASE WHEN ri.decision IN ('approved', 'modified') THEN qi.units END))
         FROM prior_auth_response_item ri
         LEFT JOIN prior_auth_request_item qi ON qi.endpoint = ri.endpoint AND qi.resource_type = 'Claim'
           AND qi.resource_id = x.claim_id AND qi.sequence = ri.item_sequence
         WHERE ri.endpoint = x.endpoint AND ri.resource_type = 'ClaimResponse'
           AND ri.resource_id = x.response_id AND ri.decision IN {APPROVED_SQL})
       WHEN x.decision IN ('approved', 'modified') THEN x.units_requested
       WHEN x.decision = 'denied' THEN 0 END AS units_approved
FROM decided x
LEFT JOIN eligibility cov ON cov.endpoint = x.endpoint AND 'Coverage/' || cov.resource_id = x.coverage_ref
"""


def _v_authorization_turnaround(d: str) -> str:
    # Cohorts by the month of the request; responses without a request have no turnaround and stay out.
    month = month_start("COALESCE(requested_at, responded_at)", d)
    groups = ["endpoint", "payer_key", "month"]
    median = percentile("pa", groups, "turnaround_days", 0.5, name="median_days")
    p90 = percentile("pa", groups, "turnaround_days", 0.9, name="p90_days")
    current = now(d)
    return f"""
WITH pa AS (
  SELECT endpoint, COALESCE(payer_key, 'unknown') AS payer_key, payer_display, {month} AS month,
    claim_id, decision, decided_at, turnaround_days, pre_auth_end
  FROM prior_authorization
  WHERE claim_id IS NOT NULL
)
SELECT g.endpoint, g.payer_key, g.payer_display, g.month, g.requested, g.decided, g.approved, g.denied,
  med.median_days AS median_turnaround_days, p90.p90_days AS p90_turnaround_days, g.pending_now,
  g.expiring_next_14_days
FROM (
  SELECT endpoint, payer_key, MAX(payer_display) AS payer_display, month,
    COUNT(*) AS requested,
    SUM(CASE WHEN decided_at IS NOT NULL THEN 1 ELSE 0 END) AS decided,
    SUM(CASE WHEN decision IN {APPROVED_SQL} THEN 1 ELSE 0 END) AS approved,
    SUM(CASE WHEN decision = 'denied' THEN 1 ELSE 0 END) AS denied,
    SUM(CASE WHEN decision = 'pending' THEN 1 ELSE 0 END) AS pending_now,
    SUM(CASE WHEN decision IN {APPROVED_SQL} AND pre_auth_end >= {current}
              AND pre_auth_end <= {shift_days(current, 14, d)} THEN 1 ELSE 0 END) AS expiring_next_14_days
  FROM pa GROUP BY endpoint, payer_key, month
) g
LEFT JOIN {median} med ON med.endpoint = g.endpoint AND med.payer_key = g.payer_key AND med.month = g.month
LEFT JOIN {p90} p90 ON p90.endpoint = g.endpoint AND p90.payer_key = g.payer_key AND p90.month = g.month
"""


def _v_payer_mix(d: str) -> str:
    current = now(d)
    return f"""
SELECT endpoint, COALESCE(payer_key, 'unknown') AS payer_key, MAX(payor_display) AS payer_display,
  plan_value, MAX(plan_name) AS plan_name, COUNT(*) AS active_coverages,
  COUNT(DISTINCT patient_ref) AS patients
FROM eligibility
WHERE status = 'active' AND (period_start IS NULL OR period_start <= {current})
  AND (period_end IS NULL OR period_end >= {current})
GROUP BY endpoint, COALESCE(payer_key, 'unknown'), plan_value
"""


def _v_eligibility_before_first_visit(d: str) -> str:
    # First visit: the earliest booked or fulfilled visit per patient. Verified: a complete or partial
    # eligibility response for that patient dated (UTC day) on or before the visit's day.
    return f"""
WITH first_visit AS (
  SELECT endpoint, patient_ref, MIN(start_at) AS first_visit_at
  FROM visit
  WHERE status IN ('booked', 'fulfilled') AND patient_ref IS NOT NULL AND start_at IS NOT NULL
  GROUP BY endpoint, patient_ref
), flagged AS (
  SELECT f.endpoint, {month_start("f.first_visit_at", d)} AS month,
    CASE WHEN EXISTS (
      SELECT 1 FROM eligibility_check c
      WHERE c.endpoint = f.endpoint AND c.patient_ref = f.patient_ref
        AND c.outcome IN ('complete', 'partial') AND (c.status IS NULL OR c.status <> 'entered-in-error')
        AND {_day("c.verified_at", d)} <= {_day("f.first_visit_at", d)}
    ) THEN 1 ELSE 0 END AS verified
  FROM first_visit f
)
SELECT endpoint, month, COUNT(*) AS patients_with_first_visit, SUM(verified) AS verified_before_visit,
  CAST(SUM(verified) AS DOUBLE PRECISION) / COUNT(*) AS rate
FROM flagged
GROUP BY endpoint, month
"""


VIEW_SQL = {
    "v_eligibility": _v_eligibility,
    "prior_authorization": _prior_authorization,
    "v_authorization_turnaround": _v_authorization_turnaround,
    "v_payer_mix": _v_payer_mix,
    "v_eligibility_before_first_visit": _v_eligibility_before_first_visit,
}


def upgrade() -> None:
    op.create_table(
        "eligibility",
        *resource_key_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("type_code", sa.String(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("subscriber_id_hash", sa.String(), nullable=True),
        sa.Column("subscriber_id", sa.String(), nullable=True),
        sa.Column("relationship", sa.String(), nullable=True),
        sa.Column("payer_key", sa.String(), nullable=True),
        sa.Column("payor_ref", sa.String(), nullable=True),
        sa.Column("payor_type", sa.String(), nullable=True),
        sa.Column("payor_display", sa.String(), nullable=True),
        sa.Column("payor_identifier", sa.String(), nullable=True),
        sa.Column("payor_refs", _json(), nullable=False),
        sa.Column("plan_value", sa.String(), nullable=True),
        sa.Column("plan_name", sa.String(), nullable=True),
        sa.Column("group_value", sa.String(), nullable=True),
        sa.Column("group_name", sa.String(), nullable=True),
        sa.Column("classes", _json(), nullable=False),
        sa.Column("network", sa.String(), nullable=True),
        sa.Column("coverage_order", sa.Integer(), nullable=True),
        sa.Column("period_start", _ts(), nullable=True),
        sa.Column("period_end", _ts(), nullable=True),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_eligibility"),
    )
    op.create_index("ix_eligibility_payer_key", "eligibility", ["payer_key"])
    op.create_index("ix_eligibility_patient_ref", "eligibility", ["patient_ref"])

    op.create_table(
        "eligibility_check",
        *resource_key_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("purpose", _json(), nullable=False),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("coverage_ref", sa.String(), nullable=True),
        sa.Column("coverage_refs", _json(), nullable=False),
        sa.Column("request_ref", sa.String(), nullable=True),
        sa.Column("insurer_ref", sa.String(), nullable=True),
        sa.Column("insurer_display", sa.String(), nullable=True),
        sa.Column("disposition", sa.Text(), nullable=True),
        sa.Column("inforce", sa.Boolean(), nullable=True),
        sa.Column("verified_at", _ts(), nullable=False),
        sa.Column("serviced_at", _ts(), nullable=True),
        sa.Column("pt_allowed_visits", sa.Integer(), nullable=True),
        sa.Column("pt_used_visits", sa.Integer(), nullable=True),
        sa.Column("ot_allowed_visits", sa.Integer(), nullable=True),
        sa.Column("ot_used_visits", sa.Integer(), nullable=True),
        sa.Column("st_allowed_visits", sa.Integer(), nullable=True),
        sa.Column("st_used_visits", sa.Integer(), nullable=True),
        sa.Column("authorization_required", sa.Boolean(), nullable=True),
        sa.Column("error_codes", _json(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_eligibility_check"),
    )
    op.create_index(
        "ix_eligibility_check_patient_ref_verified_at", "eligibility_check", ["patient_ref", "verified_at"]
    )
    op.create_index("ix_eligibility_check_coverage_ref", "eligibility_check", ["coverage_ref"])

    op.create_table(
        "prior_auth_request",
        *resource_key_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("priority", sa.String(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("coverage_ref", sa.String(), nullable=True),
        sa.Column("payer_key", sa.String(), nullable=True),
        sa.Column("insurer_ref", sa.String(), nullable=True),
        sa.Column("insurer_display", sa.String(), nullable=True),
        sa.Column("insurer_identifier", sa.String(), nullable=True),
        sa.Column("provider_ref", sa.String(), nullable=True),
        sa.Column("referral_ref", sa.String(), nullable=True),
        sa.Column("requested_at", _ts(), nullable=False),
        sa.Column("items_requested", sa.Integer(), nullable=False),
        sa.Column("units_requested", sa.Float(), nullable=False),
        sa.Column("service_codes", _json(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_prior_auth_request"),
    )
    op.create_index("ix_prior_auth_request_requested_at", "prior_auth_request", ["requested_at"])

    op.create_table(
        "prior_auth_request_item",
        *resource_key_columns(),
        sa.Column("sequence", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("service_system", sa.String(), nullable=True),
        sa.Column("service_code", sa.String(), nullable=True),
        sa.Column("units", sa.Float(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint(
            "endpoint", "resource_type", "resource_id", "sequence", name="pk_prior_auth_request_item"
        ),
    )

    op.create_table(
        "prior_auth_response",
        *resource_key_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("decision", sa.String(), nullable=False),
        sa.Column("review_actions", _json(), nullable=False),
        sa.Column("request_ref", sa.String(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("coverage_ref", sa.String(), nullable=True),
        sa.Column("payer_key", sa.String(), nullable=True),
        sa.Column("insurer_ref", sa.String(), nullable=True),
        sa.Column("insurer_display", sa.String(), nullable=True),
        sa.Column("insurer_identifier", sa.String(), nullable=True),
        sa.Column("responded_at", _ts(), nullable=False),
        sa.Column("pre_auth_ref", sa.String(), nullable=True),
        sa.Column("pre_auth_start", _ts(), nullable=True),
        sa.Column("pre_auth_end", _ts(), nullable=True),
        sa.Column("disposition", sa.Text(), nullable=True),
        sa.Column("items_decided", sa.Integer(), nullable=False),
        sa.Column("items_approved", sa.Integer(), nullable=False),
        sa.Column("error_codes", _json(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_prior_auth_response"),
    )
    op.create_index("ix_prior_auth_response_pre_auth_end", "prior_auth_response", ["pre_auth_end"])
    op.create_index("ix_prior_auth_response_request_ref", "prior_auth_response", ["request_ref"])

    op.create_table(
        "prior_auth_response_item",
        *resource_key_columns(),
        sa.Column("line", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("item_sequence", sa.Integer(), nullable=True),
        sa.Column("added", sa.Boolean(), nullable=False),
        sa.Column("service_system", sa.String(), nullable=True),
        sa.Column("service_code", sa.String(), nullable=True),
        sa.Column("review_action", sa.String(), nullable=True),
        sa.Column("decision", sa.String(), nullable=True),
        sa.Column("units_authorized", sa.Float(), nullable=True),
        sa.Column("covered_amount", sa.Float(), nullable=True),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint(
            "endpoint", "resource_type", "resource_id", "line", name="pk_prior_auth_response_item"
        ),
    )

    # v_eligibility_before_first_visit reads `visit` (revision 0002, referrals).
    for name in VIEWS:
        create_view(name, {d: VIEW_SQL[name](d) for d in DIALECTS})


def downgrade() -> None:
    for name in reversed(VIEWS):
        drop_view(name)
    for table in (
        "prior_auth_response_item",
        "prior_auth_response",
        "prior_auth_request_item",
        "prior_auth_request",
        "eligibility_check",
        "eligibility",
    ):
        op.drop_table(table)
