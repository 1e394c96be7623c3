"""Headline numbers read back from the warehouse's views (the demo prints them)."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

import sqlalchemy as sa
from rich.console import Group
from rich.table import Table
from sqlalchemy.engine import Connection, Engine

from connector.warehouse.models import Base
from connector.warehouse.names import shown

#: (title, SQL over the views, ((heading, format), ...)). Aggregates only: nothing here names a patient.
#: One format per kind of number, so every table shows it the same way: `text`, `count` (an integer),
#: `rate` (0-1, two decimals), `days` (two decimals), `money` (two decimals after the data's currency).
SECTIONS: tuple[tuple[str, str, tuple[tuple[str, str], ...]], ...] = (
    (
        "New referrals per week (latest 8 weeks)",
        "SELECT week, SUM(referrals), SUM(intake_complete), SUM(acknowledged), SUM(evaluations_scheduled), "
        "SUM(evaluations_attended) FROM v_referrals_weekly GROUP BY week ORDER BY week DESC LIMIT 8",
        (
            ("week", "text"),
            ("referrals", "count"),
            ("intake complete", "count"),
            ("acknowledged", "count"),
            ("evaluations scheduled", "count"),
            ("attended", "count"),
        ),
    ),
    (
        "Referrals by discipline",
        "SELECT discipline, SUM(referrals), SUM(evaluations_scheduled) FROM v_referrals_weekly "
        "GROUP BY discipline ORDER BY SUM(referrals) DESC",
        (("discipline", "text"), ("referrals", "count"), ("evaluations scheduled", "count")),
    ),
    (
        "Referral funnel per month",
        "SELECT month, received, acknowledged, evaluation_scheduled, evaluation_attended, "
        "median_days_received_to_scheduled FROM v_referral_funnel ORDER BY month DESC LIMIT 6",
        (
            ("month", "text"),
            ("received", "count"),
            ("acknowledged", "count"),
            ("evaluation scheduled", "count"),
            ("attended", "count"),
            ("median days to booking", "days"),
        ),
    ),
    (
        "Closing the loop with referrers (a folder sends nothing: the updates wait for an EMR)",
        "SELECT month, SUM(referrals), SUM(evaluations_attended), SUM(updated_within_7_days), "
        "SUM(summaries_sent), SUM(updates_waiting) FROM v_referral_loop_by_source "
        "GROUP BY month ORDER BY month DESC LIMIT 6",
        (
            ("month", "text"),
            ("referrals", "count"),
            ("evaluated", "count"),
            ("updated within 7 days", "count"),
            ("case summaries sent", "count"),
            ("updates waiting", "count"),
        ),
    ),
    (
        "Top referral sources (last 90 days)",
        "SELECT source, source_type, referrals_last_90_days, referrals_prior_90_days, conversion_rate, "
        "incomplete_intake_share FROM v_referral_sources ORDER BY referrals_last_90_days DESC LIMIT 8",
        (
            ("source", "text"),
            ("type", "text"),
            ("last 90 days", "count"),
            ("prior 90 days", "count"),
            ("conversion", "rate"),
            ("incomplete intakes", "rate"),
        ),
    ),
    (
        "Eligibility verified before the first visit",
        "SELECT month, patients_with_first_visit, verified_before_visit, rate "
        "FROM v_eligibility_before_first_visit ORDER BY month DESC LIMIT 6",
        (
            ("month", "text"),
            ("patients with a first visit", "count"),
            ("verified before", "count"),
            ("rate", "rate"),
        ),
    ),
    (
        "Prior-authorization turnaround",
        # Named as the report names payers: the synced Organization, else the display the data carries.
        "SELECT t.month, COALESCE(n.name, t.payer_display, t.payer_key), t.requested, t.decided, "
        "t.median_turnaround_days, t.pending_now FROM v_authorization_turnaround t "
        "LEFT JOIN v_source_names n ON n.endpoint = t.endpoint AND n.source_ref = t.payer_key "
        "ORDER BY t.month DESC, t.requested DESC LIMIT 8",
        (
            ("month", "text"),
            ("payer", "text"),
            ("requested", "count"),
            ("decided", "count"),
            ("median days", "days"),
            ("pending now", "count"),
        ),
    ),
    (
        "Denials by reason category",
        "SELECT category, SUM(denied_lines), SUM(denied_amount) FROM v_denials_by_reason "
        "GROUP BY category ORDER BY SUM(denied_lines) DESC",
        (("category", "text"), ("denied lines", "count"), ("denied amount", "money")),
    ),
    (
        "Open denial queue",
        "SELECT category, COUNT(*), SUM(denied_amount), MAX(age_days) FROM v_denial_queue "
        "GROUP BY category ORDER BY COUNT(*) DESC",
        (("category", "text"), ("open denials", "count"), ("amount", "money"), ("oldest (days)", "count")),
    ),
    (
        "Queued for the EMR (`connector push --dry-run` shows what would be sent)",
        "SELECT kind, status, COUNT(*) FROM outbox GROUP BY kind, status ORDER BY kind, status",
        (("kind", "text"), ("status", "text"), ("items", "count")),
    ),
)


def main_currency(conn: Connection) -> str | None:
    """The currency the claims are in (the most common `claim.currency`); None when no claim says one."""
    value = conn.execute(
        sa.text(
            "SELECT currency FROM claim WHERE currency IS NOT NULL "
            "GROUP BY currency ORDER BY COUNT(*) DESC, currency LIMIT 1"
        )
    ).scalar()
    return str(value) if value else None


def money(value: float | None, currency: str | None) -> str:
    """An amount with two decimals, after its currency when the data has one ("USD 1,234.50")."""
    if value is None:
        return ""
    text = f"{value:,.2f}"
    return f"{currency} {text}" if currency else text


def _cell(value: Any, kind: str, currency: str | None) -> str:
    if value is None:
        return ""
    if kind == "count":
        return str(int(value))
    if kind in ("rate", "days"):
        return f"{float(value):.2f}"
    if kind == "money":
        return money(float(value), currency)
    # A payer or source the warehouse has no name for shows as its bucket, never the resource id.
    return shown(str(value)[:10] if isinstance(value, date | datetime) else str(value))


def demo_metrics(engine: Engine) -> dict[str, Any]:
    """Row counts per table and the rows of each section, as plain values."""
    with engine.connect() as conn:
        counts = {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in sorted(Base.metadata.tables.items())
        }
        currency = main_currency(conn)
        sections = []
        for title, sql, columns in SECTIONS:
            kinds = [kind for _, kind in columns]
            rows = [
                [_cell(v, kind, currency) for v, kind in zip(row, kinds, strict=True)]
                for row in conn.execute(sa.text(sql))
            ]
            sections.append({"title": title, "columns": [h for h, _ in columns], "rows": rows})
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
