"""Headline numbers read back from the warehouse (the demo prints them)."""

from __future__ import annotations

from collections import Counter
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from rich.console import Group
from rich.table import Table
from sqlalchemy.engine import Engine

from connector.warehouse.models import Base


def _week_start(moment: datetime) -> str:
    monday = moment.date() - timedelta(days=moment.weekday())
    return monday.isoformat()


def demo_metrics(engine: Engine, *, weeks: int = 8) -> dict[str, Any]:
    """Row counts per table, and referrals per week, status and service over the newest `weeks` weeks."""
    referral = Base.metadata.tables["referral"]
    with engine.connect() as conn:
        counts = {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in sorted(Base.metadata.tables.items())
        }
        rows = conn.execute(
            sa.select(referral.c.authored_on, referral.c.status, referral.c.service_display)
        ).all()
    per_week: Counter[str] = Counter()
    per_status: Counter[str] = Counter()
    per_service: Counter[str] = Counter()
    for authored_on, status, service in rows:
        per_status[status or "unknown"] += 1
        per_service[service or "unknown"] += 1
        if authored_on is not None:
            per_week[_week_start(authored_on)] += 1
    recent = sorted(per_week.items())[-weeks:]
    return {
        "tables": counts,
        "referrals_per_week": dict(recent),
        "referrals_by_status": dict(per_status.most_common()),
        "referrals_by_service": dict(per_service.most_common(8)),
    }


def render(metrics: dict[str, Any]) -> Group:
    weekly = Table(title="New referrals per week (week starting)", title_justify="left")
    weekly.add_column("week")
    weekly.add_column("referrals", justify="right")
    for week, n in metrics["referrals_per_week"].items():
        weekly.add_row(week, str(n))
    status = Table(title="Referrals by status", title_justify="left")
    status.add_column("status")
    status.add_column("referrals", justify="right")
    for name, n in metrics["referrals_by_status"].items():
        status.add_row(name, str(n))
    service = Table(title="Referrals by requested service", title_justify="left")
    service.add_column("service")
    service.add_column("referrals", justify="right")
    for name, n in metrics["referrals_by_service"].items():
        service.add_row(name, str(n))
    tables = Table(title="Warehouse tables", title_justify="left")
    tables.add_column("table")
    tables.add_column("rows", justify="right")
    for name, n in metrics["tables"].items():
        tables.add_row(name, str(n))
    return Group(weekly, status, service, tables)
