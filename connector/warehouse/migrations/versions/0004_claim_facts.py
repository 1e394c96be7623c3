"""Claim facts: claims, claim items, payer decisions, denied lines and the denial views.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

Types are spelled out here instead of imported from the models, so this revision keeps creating the same
schema when the models move on.

The views derive what no single resource says (the pipeline loads each resource on its own, in any order):
- an ExplanationOfBenefit that points at a ClaimResponse we also have is the same decision and is not
  counted twice;
- a line row counts only while its `content_hash` equals its header row's (the writer replaces a
  resource's lines with each newer version; this guards the views should a stale line remain);
- a denial is `resolved` when a later decision (ClaimResponse / EOB, outcome complete or partial) on the
  same claim, or on a claim whose `related.claim` names it, has no denial on that line (for a header
  denial: pays something); `superseded` when a later decision on the same claim denies it again (that
  one is the row to work); `appealed` when a Claim names the denied claim in `related.claim`
  (relationship `prior` or none) and nothing paid yet; else `open`.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from connector.warehouse.migrations.columns import json_type as _json
from connector.warehouse.migrations.columns import timestamp as _ts
from connector.warehouse.sqlviews import create_view, days_between, dialect, drop_view, month_start, now

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _money() -> sa.Numeric[float]:
    return sa.Numeric(12, 2, asdecimal=False)


def _resource_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("endpoint", sa.String(), nullable=False),
        sa.Column("resource_type", sa.String(), nullable=False),
        sa.Column("resource_id", sa.String(), nullable=False),
    ]


def _version_columns() -> list[sa.Column[object]]:
    return [
        sa.Column("version_id", sa.String(), nullable=True),
        sa.Column("last_updated", _ts(), nullable=True),
        sa.Column("content_hash", sa.String(), nullable=False),
    ]


def _create_tables() -> None:
    op.create_table(
        "claim",
        *_resource_columns(),
        *_version_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("claim_type", sa.String(), nullable=True),
        sa.Column("identifier", sa.String(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("provider_ref", sa.String(), nullable=True),
        sa.Column("insurer_ref", sa.String(), nullable=True),
        sa.Column("payer_key", sa.String(), nullable=True),
        sa.Column("coverage_ref", sa.String(), nullable=True),
        sa.Column("created", _ts(), nullable=False),
        sa.Column("billable_start", _ts(), nullable=True),
        sa.Column("billable_end", _ts(), nullable=True),
        sa.Column("total_amount", _money(), nullable=True),
        sa.Column("currency", sa.String(), nullable=True),
        sa.Column("item_count", sa.Integer(), nullable=False),
        sa.Column("service_codes", _json(), nullable=False),
        sa.Column("service_request_ref", sa.String(), nullable=True),
        sa.Column("related_claim_ref", sa.String(), nullable=True),
        sa.Column("related_relationship", sa.String(), nullable=True),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_claim"),
    )
    op.create_index("ix_claim_created", "claim", ["created"])
    op.create_index("ix_claim_identifier", "claim", ["identifier"])
    op.create_index("ix_claim_related_claim_ref", "claim", ["related_claim_ref"])

    op.create_table(
        "claim_item",
        *_resource_columns(),
        sa.Column("item_sequence", sa.Integer(), autoincrement=False, nullable=False),
        *_version_columns(),
        sa.Column("product_system", sa.String(), nullable=True),
        sa.Column("product_code", sa.String(), nullable=True),
        sa.Column("product_display", sa.String(), nullable=True),
        sa.Column("modifiers", _json(), nullable=False),
        sa.Column("quantity", sa.Float(), nullable=True),
        sa.Column("unit_price", _money(), nullable=True),
        sa.Column("net_amount", _money(), nullable=True),
        sa.Column("serviced_date", _ts(), nullable=True),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint(
            "endpoint", "resource_type", "resource_id", "item_sequence", name="pk_claim_item"
        ),
    )
    op.create_index("ix_claim_item_product_code", "claim_item", ["product_code"])

    op.create_table(
        "claim_adjudication",
        *_resource_columns(),
        *_version_columns(),
        sa.Column("status", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("disposition", sa.String(), nullable=True),
        sa.Column("claim_ref", sa.String(), nullable=True),
        sa.Column("claim_identifier", sa.String(), nullable=True),
        sa.Column("claim_key", sa.String(), nullable=False),
        sa.Column("claim_response_ref", sa.String(), nullable=True),
        sa.Column("patient_ref", sa.String(), nullable=True),
        sa.Column("insurer_ref", sa.String(), nullable=True),
        sa.Column("payer_key", sa.String(), nullable=True),
        sa.Column("provider_ref", sa.String(), nullable=True),
        sa.Column("created", _ts(), nullable=False),
        sa.Column("payment_type", sa.String(), nullable=True),
        sa.Column("payment_date", _ts(), nullable=True),
        sa.Column("payment_amount", _money(), nullable=True),
        sa.Column("submitted_amount", _money(), nullable=True),
        sa.Column("benefit_amount", _money(), nullable=True),
        sa.Column("denied_amount", _money(), nullable=True),
        sa.Column("line_count", sa.Integer(), nullable=False),
        sa.Column("denied_line_count", sa.Integer(), nullable=False),
        sa.Column("paid_in_full", sa.Boolean(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", name="pk_claim_adjudication"),
    )
    op.create_index(
        "ix_claim_adjudication_endpoint_claim_key", "claim_adjudication", ["endpoint", "claim_key"]
    )
    op.create_index("ix_claim_adjudication_created", "claim_adjudication", ["created"])

    op.create_table(
        "denial",
        *_resource_columns(),
        sa.Column("line_key", sa.String(), nullable=False),
        *_version_columns(),
        sa.Column("item_sequence", sa.Integer(), nullable=True),
        sa.Column("product_code", sa.String(), nullable=True),
        sa.Column("claim_ref", sa.String(), nullable=True),
        sa.Column("claim_identifier", sa.String(), nullable=True),
        sa.Column("claim_key", sa.String(), nullable=False),
        sa.Column("payer_key", sa.String(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=True),
        sa.Column("disposition", sa.String(), nullable=True),
        sa.Column("line_outcome", sa.String(), nullable=False),
        sa.Column("submitted_amount", _money(), nullable=True),
        sa.Column("eligible_amount", _money(), nullable=True),
        sa.Column("benefit_amount", _money(), nullable=True),
        sa.Column("denied_amount", _money(), nullable=True),
        sa.Column("reason_system", sa.String(), nullable=True),
        sa.Column("reason_code", sa.String(), nullable=True),
        sa.Column("group_code", sa.String(), nullable=True),
        sa.Column("reason_known", sa.Boolean(), nullable=False),
        sa.Column("reason_codes", _json(), nullable=False),
        sa.Column("remark_codes", _json(), nullable=False),
        sa.Column("category", sa.String(), nullable=False),
        sa.Column("next_action", sa.String(), nullable=False),
        sa.Column("decided_at", _ts(), nullable=False),
        sa.Column("loaded_at", _ts(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint", "resource_type", "resource_id", "line_key", name="pk_denial"),
    )
    op.create_index("ix_denial_endpoint_claim_key", "denial", ["endpoint", "claim_key"])
    op.create_index("ix_denial_decided_at", "denial", ["decided_at"])
    op.create_index("ix_denial_category", "denial", ["category"])


# Decisions counted once: an EOB that points at a ClaimResponse we hold is the same decision; decisions
# entered in error are no decisions.
_EFFECTIVE = """eff AS (
  SELECT a.* FROM claim_adjudication a
  WHERE (a.status IS NULL OR a.status <> 'entered-in-error')
    AND NOT (a.resource_type = 'ExplanationOfBenefit' AND a.claim_response_ref IS NOT NULL AND EXISTS (
    SELECT 1 FROM claim_adjudication r
    WHERE r.endpoint = a.endpoint AND r.resource_type = 'ClaimResponse'
      AND 'ClaimResponse/' || r.resource_id = a.claim_response_ref)))"""

# Denial lines of the current version of a counted decision.
_CURRENT = """cur AS (
  SELECT d.* FROM denial d JOIN eff a
    ON a.endpoint = d.endpoint AND a.resource_type = d.resource_type AND a.resource_id = d.resource_id
   AND a.content_hash = d.content_hash)"""

_ADJUDICATED = "('complete', 'partial', 'error')"


def _whole_days(later: str, earlier: str, d: str) -> str:
    span = days_between(later, earlier, d)
    return f"CAST({span} AS INTEGER)" if d == "sqlite" else f"CAST(FLOOR({span}) AS INTEGER)"


def _denial_status_sql(d: str) -> str:
    claim_match = """c.endpoint = d.endpoint AND c.resource_type = 'Claim'
        AND ('Claim/' || c.resource_id = d.claim_ref OR c.identifier = d.claim_identifier)"""
    return f"""WITH {_EFFECTIVE},
{_CURRENT},
later AS (
  SELECT d.endpoint, d.resource_type, d.resource_id, d.line_key,
         l.resource_type AS later_type, l.resource_id AS later_id, l.benefit_amount AS later_benefit,
         CASE WHEN l.claim_key = d.claim_key THEN 1 ELSE 0 END AS same_claim
  FROM cur d JOIN eff l ON l.endpoint = d.endpoint
   AND l.outcome IN ('complete', 'partial')
   AND (l.created > d.decided_at OR (l.created = d.decided_at AND l.last_updated > d.last_updated))
   AND (l.claim_key = d.claim_key OR l.claim_key IN (
         SELECT 'Claim/' || r.resource_id FROM claim r
         WHERE r.endpoint = d.endpoint AND r.related_claim_ref = d.claim_ref))),
paying AS (
  SELECT DISTINCT x.endpoint, x.resource_type, x.resource_id, x.line_key FROM later x
  WHERE (x.line_key <> 'claim' OR COALESCE(x.later_benefit, 0) > 0)
    AND NOT EXISTS (
      SELECT 1 FROM cur dd
      WHERE dd.endpoint = x.endpoint AND dd.resource_type = x.later_type AND dd.resource_id = x.later_id
        AND dd.line_key IN (x.line_key, 'claim'))),
base AS (
  SELECT d.endpoint, d.resource_type, d.resource_id, d.line_key, d.claim_key, d.claim_ref, d.item_sequence,
    COALESCE(d.product_code, (
      SELECT MIN(ci.product_code) FROM claim_item ci JOIN claim c
        ON c.endpoint = ci.endpoint AND c.resource_type = ci.resource_type
       AND c.resource_id = ci.resource_id AND c.content_hash = ci.content_hash
      WHERE {claim_match} AND ci.item_sequence = d.item_sequence)) AS product_code,
    COALESCE(d.payer_key, 'unknown') AS payer,
    d.decided_at,
    (SELECT MIN(c.created) FROM claim c WHERE {claim_match}) AS claim_created,
    d.line_outcome, d.category, d.reason_code, d.group_code, d.reason_known,
    d.submitted_amount, d.denied_amount, d.next_action,
    CASE
      WHEN EXISTS (SELECT 1 FROM paying p WHERE p.endpoint = d.endpoint AND p.resource_type = d.resource_type
                   AND p.resource_id = d.resource_id AND p.line_key = d.line_key) THEN 'resolved'
      WHEN EXISTS (SELECT 1 FROM later x WHERE x.endpoint = d.endpoint AND x.resource_type = d.resource_type
                   AND x.resource_id = d.resource_id AND x.line_key = d.line_key AND x.same_claim = 1)
        THEN 'superseded'
      WHEN EXISTS (SELECT 1 FROM claim r WHERE r.endpoint = d.endpoint AND r.related_claim_ref = d.claim_ref
                   AND COALESCE(r.related_relationship, 'prior') = 'prior') THEN 'appealed'
      ELSE 'open'
    END AS status
  FROM cur d)
SELECT endpoint, resource_type, resource_id, line_key, claim_key, claim_ref, item_sequence, product_code,
  payer, decided_at, claim_created, {_whole_days("decided_at", "claim_created", d)} AS days_to_decision,
  line_outcome, category, reason_code, group_code, reason_known, submitted_amount, denied_amount,
  next_action, status, {_whole_days(now(d), "decided_at", d)} AS age_days
FROM base"""


_DENIAL_QUEUE = """SELECT endpoint, resource_type, resource_id, line_key, claim_key, payer, product_code,
  category, reason_code, group_code, denied_amount, next_action, status, decided_at, age_days
FROM v_denial_status WHERE status IN ('open', 'appealed')
ORDER BY decided_at, endpoint, resource_type, resource_id, line_key"""


def _denials_by_reason_sql(d: str) -> str:
    return f"""WITH {_EFFECTIVE},
lines AS (
  SELECT endpoint, month, payer, SUM(line_count) AS adjudicated_lines FROM (
    SELECT a.endpoint, {month_start("a.created", d)} AS month, COALESCE(a.payer_key, 'unknown') AS payer,
           a.line_count
    FROM eff a WHERE a.outcome IN {_ADJUDICATED}) m
  GROUP BY endpoint, month, payer),
denied AS (
  SELECT endpoint, month, payer, category, reason_code, COUNT(*) AS denied_lines,
         SUM(denied_amount) AS denied_amount FROM (
    SELECT x.endpoint, {month_start("x.decided_at", d)} AS month, COALESCE(x.payer_key, 'unknown') AS payer,
           x.category, x.reason_code, x.denied_amount
    FROM denial x JOIN eff a
      ON a.endpoint = x.endpoint AND a.resource_type = x.resource_type AND a.resource_id = x.resource_id
     AND a.content_hash = x.content_hash
    WHERE a.outcome IN {_ADJUDICATED}) m
  GROUP BY endpoint, month, payer, category, reason_code)
SELECT dn.endpoint, dn.month, dn.payer, dn.category, dn.reason_code, dn.denied_lines, dn.denied_amount,
  ln.adjudicated_lines,
  CAST(dn.denied_lines AS DOUBLE PRECISION) / ln.adjudicated_lines AS denial_rate
FROM denied dn JOIN lines ln ON ln.endpoint = dn.endpoint AND ln.month = dn.month AND ln.payer = dn.payer"""


def _clean_claim_rate_sql(d: str) -> str:
    return f"""WITH {_EFFECTIVE},
ranked AS (
  SELECT a.endpoint, a.payer_key, a.created, a.paid_in_full,
    ROW_NUMBER() OVER (PARTITION BY a.endpoint, a.claim_key
                       ORDER BY a.created, a.last_updated, a.resource_type, a.resource_id) AS rn
  FROM eff a WHERE a.outcome IN {_ADJUDICATED}),
firsts AS (
  SELECT endpoint, {month_start("created", d)} AS month, COALESCE(payer_key, 'unknown') AS payer,
    CASE WHEN paid_in_full THEN 1 ELSE 0 END AS clean
  FROM ranked WHERE rn = 1)
SELECT endpoint, month, payer, COUNT(*) AS adjudicated_claims, SUM(clean) AS clean_claims,
  CAST(SUM(clean) AS DOUBLE PRECISION) / COUNT(*) AS clean_claim_rate
FROM firsts GROUP BY endpoint, month, payer"""


def upgrade() -> None:
    _create_tables()
    d = dialect()
    create_view("v_denial_status", _denial_status_sql(d))
    create_view("v_denial_queue", _DENIAL_QUEUE)
    create_view("v_denials_by_reason", _denials_by_reason_sql(d))
    create_view("v_clean_claim_rate", _clean_claim_rate_sql(d))


def downgrade() -> None:
    for view in ("v_clean_claim_rate", "v_denials_by_reason", "v_denial_queue", "v_denial_status"):
        drop_view(view)
    for table in ("denial", "claim_adjudication", "claim_item", "claim"):
        op.drop_table(table)
