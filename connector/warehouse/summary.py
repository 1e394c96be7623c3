"""Headline numbers read back from the warehouse's views (the demo prints them)."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from rich.console import Group
from rich.table import Table
from sqlalchemy.engine import Engine

from connector.warehouse.models import Base
from connector.warehouse.names import is_reference, unknown_name

#: (title, SQL over the views, column headings). Aggregates only: nothing here names a patient.
SECTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    (
        "New referrals per week (latest 8 weeks)",
        "SELECT week, SUM(referrals), SUM(intake_complete), SUM(acknowledged), SUM(evaluations_scheduled), "
        "SUM(evaluations_attended) FROM v_referrals_weekly GROUP BY week ORDER BY week DESC LIMIT 8",
        ("week", "referrals", "intake complete", "acknowledged", "evaluations scheduled", "attended"),
    ),
    (
        "Referrals by discipline",
        "SELECT discipline, SUM(referrals), SUM(evaluations_scheduled) FROM v_referrals_weekly "
        "GROUP BY discipline ORDER BY SUM(referrals) DESC",
        ("discipline", "referrals", "evaluations scheduled"),
    ),
    (
        "Referral funnel per month",
        "SELECT month, received, acknowledged, evaluation_scheduled, evaluation_attended, "
        "median_days_received_to_scheduled FROM v_referral_funnel ORDER BY month DESC LIMIT 6",
        ("month", "received", "acknowledged", "evaluation scheduled", "attended", "median days to booking"),
    ),
    (
        "Top referral sources (last 90 days)",
        "SELECT source, source_type, referrals_last_90_days, referrals_prior_90_days, conversion_rate, "
        "incomplete_intake_share FROM v_referral_sources ORDER BY referrals_last_90_days DESC LIMIT 8",
        ("source", "type", "last 90 days", "prior 90 days", "conversion", "incomplete intakes"),
    ),
    (
        "Eligibility verified before the first visit",
        "SELECT month, patients_with_first_visit, verified_before_visit, rate "
        "FROM v_eligibility_before_first_visit ORDER BY month DESC LIMIT 6",
        ("month", "patients with a first visit", "verified before", "rate"),
    ),
    (
        "Prior-authorization turnaround",
        # Named as the report names payers: the synced Organization, else the display the data carries.
        "SELECT t.month, COALESCE(n.name, t.payer_display, t.payer_key), t.requested, t.decided, "
        "t.median_turnaround_days, t.pending_now FROM v_authorization_turnaround t "
        "LEFT JOIN v_source_names n ON n.endpoint = t.endpoint AND n.source_ref = t.payer_key "
        "ORDER BY t.month DESC, t.requested DESC LIMIT 8",
        ("month", "payer", "requested", "decided", "median days", "pending now"),
    ),
    (
        "Denials by reason category",
        "SELECT category, SUM(denied_lines), SUM(denied_amount) FROM v_denials_by_reason "
        "GROUP BY category ORDER BY SUM(denied_lines) DESC",
        ("category", "denied lines", "denied amount"),
    ),
    (
        "Open denial queue",
        "SELECT category, COUNT(*), SUM(denied_amount), MAX(age_days) FROM v_denial_queue "
        "GROUP BY category ORDER BY COUNT(*) DESC",
        ("category", "open denials", "amount", "oldest (days)"),
    ),
    (
        "Queued for the EMR (`connector push --dry-run` shows what would be sent)",
        "SELECT kind, status, COUNT(*) FROM outbox GROUP BY kind, status ORDER BY kind, status",
        ("kind", "status", "items"),
    ),
)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, str) and is_reference(value):
        # A payer or source the warehouse has no name for: its bucket, never the resource id.
        return unknown_name(value) or value
    return str(value)


def demo_metrics(engine: Engine) -> dict[str, Any]:
    """Row counts per table and the rows of each section, as plain values."""
    with engine.connect() as conn:
        counts = {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in sorted(Base.metadata.tables.items())
        }
        sections = []
        for title, sql, headings in SECTIONS:
            rows = [[_cell(v) for v in row] for row in conn.execute(sa.text(sql))]
            sections.append({"title": title, "columns": list(headings), "rows": rows})
    return {"tables": counts, "sections": sections}


def render(metrics: dict[str, Any]) -> Group:
    tables = []
    for section in metrics["sections"]:
        table = Table(title=section["title"], title_justify="left")
        for i, heading in enumerate(section["columns"]):
            table.add_column(heading, justify="left" if i == 0 else "right")
        for row in section["rows"]:
            table.add_row(*row)
        tables.append(table)
    counts = Table(title="Warehouse tables", title_justify="left")
    counts.add_column("table")
    counts.add_column("rows", justify="right")
    for name, n in metrics["tables"].items():
        counts.add_row(name, str(n))
    tables.append(counts)
    return Group(*tables)
