"""Closing the loop with referrers: `v_referral_loop` (per referral) and `v_referral_loop_by_source`.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08

An update is a Task milestone or a case summary delivered to the EMR after the acknowledgment (the `sent`
outbox items of the referral). Per referral: when it was acknowledged, its evaluation attended, its first
update and how many were sent; whether the referrer heard back within 7 days of the evaluation. Per source
and month received: the share of evaluated referrals updated within 7 days and the median days to the
first update.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence

from connector.warehouse import sqlviews
from connector.warehouse.sqlviews import create_view, drop_view

revision: str = "0017"
down_revision: str | Sequence[str] | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DIALECTS = ("sqlite", "postgresql")
#: Days after the evaluation within which the referrer should hear back.
UPDATE_DAYS = 7


def _referral_of_key(d: str) -> str:
    # `ServiceRequest/<id>#<milestone>` -> `ServiceRequest/<id>`
    if d == "sqlite":
        return "substr(item_key, 1, instr(item_key, '#') - 1)"
    return "split_part(item_key, '#', 1)"


def loop_sql(d: str) -> str:
    referral_views = importlib.import_module("connector.warehouse.migrations.versions.0002_referral_facts")
    facts = referral_views.facts_with(d, acknowledgments=True, names=True)
    within = sqlviews.shift_days("m.attended_at", UPDATE_DAYS, d)
    return f"""{facts},
sent AS (
    SELECT endpoint, {_referral_of_key(d)} AS referral_ref, kind, item_key, sent_at
    FROM outbox
    WHERE status = 'sent' AND kind IN ('task-update', 'case-summary') AND item_key LIKE 'ServiceRequest/%#%'
),
updates AS (
    SELECT endpoint, referral_ref,
        MIN(sent_at) AS first_update_at,
        MIN(CASE WHEN kind = 'case-summary' THEN sent_at END) AS first_summary_at,
        SUM(CASE WHEN kind = 'task-update' THEN 1 ELSE 0 END) AS task_updates_sent,
        SUM(CASE WHEN kind = 'case-summary' THEN 1 ELSE 0 END) AS summaries_sent
    FROM sent
    GROUP BY endpoint, referral_ref
),
waiting AS (
    SELECT endpoint, {_referral_of_key(d)} AS referral_ref, COUNT(*) AS updates_waiting
    FROM outbox
    WHERE status = 'pending' AND kind IN ('task-update', 'case-summary')
        AND item_key LIKE 'ServiceRequest/%#%'
    GROUP BY endpoint, {_referral_of_key(d)}
),
after_evaluation AS (
    SELECT s.endpoint, s.referral_ref, MIN(s.sent_at) AS updated_at
    FROM sent s
    JOIN milestones m ON m.endpoint = s.endpoint AND m.referral_ref = s.referral_ref
    WHERE m.attended_at IS NOT NULL AND s.sent_at >= m.attended_at
    GROUP BY s.endpoint, s.referral_ref
)
SELECT
    ref.endpoint,
    ref.resource_id AS referral_id,
    ref.source_ref,
    ref.source,
    ref.source_type,
    ref.discipline,
    ref.received_at,
    {sqlviews.month_start("ref.received_at", d)} AS month,
    ref.acknowledged_at,
    m.attended_at AS evaluation_attended_at,
    u.first_update_at,
    u.first_summary_at,
    {sqlviews.days_between("u.first_update_at", "ref.received_at", d)} AS days_to_first_update,
    COALESCE(u.task_updates_sent, 0) AS task_updates_sent,
    COALESCE(u.summaries_sent, 0) AS summaries_sent,
    COALESCE(u.task_updates_sent, 0) + COALESCE(u.summaries_sent, 0) AS milestones_sent,
    COALESCE(w.updates_waiting, 0) AS updates_waiting,
    CASE WHEN m.attended_at IS NULL THEN NULL
         WHEN ae.updated_at IS NOT NULL AND ae.updated_at <= {within} THEN 1 ELSE 0 END
        AS updated_within_7_days
FROM ref
LEFT JOIN milestones m ON m.endpoint = ref.endpoint AND m.referral_ref = ref.referral_ref
LEFT JOIN updates u ON u.endpoint = ref.endpoint AND u.referral_ref = ref.referral_ref
LEFT JOIN after_evaluation ae ON ae.endpoint = ref.endpoint AND ae.referral_ref = ref.referral_ref
LEFT JOIN waiting w ON w.endpoint = ref.endpoint AND w.referral_ref = ref.referral_ref
WHERE ref.received_at IS NOT NULL
"""


def by_source_sql(d: str) -> str:
    groups = ["endpoint", "source_ref", "source", "source_type", "month"]
    median = sqlviews.percentile("v_referral_loop", groups, "days_to_first_update", 0.5, name="median")
    on = " AND ".join(f"(md.{g} = c.{g} OR (md.{g} IS NULL AND c.{g} IS NULL))" for g in groups)
    return f"""
SELECT c.*,
    CASE WHEN c.evaluations_attended > 0
         THEN ROUND(1.0 * c.updated_within_7_days / c.evaluations_attended, 4) END
        AS share_updated_within_7_days,
    md.median AS median_days_to_first_update
FROM (
    SELECT endpoint, source_ref, source, source_type, month,
        COUNT(*) AS referrals,
        SUM(CASE WHEN acknowledged_at IS NOT NULL THEN 1 ELSE 0 END) AS acknowledged,
        SUM(CASE WHEN evaluation_attended_at IS NOT NULL THEN 1 ELSE 0 END) AS evaluations_attended,
        SUM(COALESCE(updated_within_7_days, 0)) AS updated_within_7_days,
        SUM(summaries_sent) AS summaries_sent,
        SUM(updates_waiting) AS updates_waiting
    FROM v_referral_loop
    GROUP BY endpoint, source_ref, source, source_type, month
) c
LEFT JOIN {median} md ON {on}
"""


def upgrade() -> None:
    create_view("v_referral_loop", {d: loop_sql(d) for d in DIALECTS})
    create_view("v_referral_loop_by_source", {d: by_source_sql(d) for d in DIALECTS})


def downgrade() -> None:
    drop_view("v_referral_loop_by_source")
    drop_view("v_referral_loop")
