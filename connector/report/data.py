"""What the practice report shows, read from the warehouse's `v_*` views as plain dicts.

Aggregates only: counts, rates, days, amounts, and the names of referral sources and payers. No patient
reference, resource id or claim key leaves this module, so the rendered page holds no patient identifiers.

The views are small per-week / per-month aggregates, so rows are fetched whole and filtered to the period
in Python: that keeps the SQL identical on SQLite (dates as 'YYYY-MM-DD' text) and PostgreSQL (dates).
"""

from __future__ import annotations

import re
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from connector.errors import ConfigError
from connector.subscriptions.queue import latency_figures
from connector.warehouse.claim_decisions import ADJUDICATED_OUTCOMES, COUNTED_DECISIONS
from connector.warehouse.names import shown
from connector.warehouse.summary import main_currency

#: Steps of the referral funnel, in order, with the `v_referral_funnel` column that counts each.
FUNNEL_STEPS: tuple[tuple[str, str], ...] = (
    ("received", "Received"),
    ("acknowledged", "Acknowledged"),
    ("evaluation_scheduled", "Evaluation scheduled"),
    ("evaluation_attended", "Evaluation attended"),
)
FUNNEL_MEDIANS: tuple[tuple[str, str], ...] = (
    ("median_days_received_to_acknowledged", "received → acknowledged"),
    ("median_days_received_to_scheduled", "received → scheduled"),
    ("median_days_scheduled_to_attended", "scheduled → attended"),
    ("median_days_received_to_attended", "received → attended"),
)
#: Age buckets of the open denial queue (upper bound in days, inclusive; None = no bound).
QUEUE_AGE_BUCKETS: tuple[tuple[str, int | None], ...] = (
    ("0-30 days", 30),
    ("31-60 days", 60),
    ("61-90 days", 90),
    ("91-180 days", 180),
    ("over 180 days", None),
)
#: How many referral sources get their own colour in the weekly chart; the rest are "other sources".
TOP_SOURCES_WEEKLY = 6
#: How many sources the source map lists.
TOP_SOURCES_TABLE = 15

_PERIOD = re.compile(r"^\s*(\d+)\s*([dwmy])\s*$", re.IGNORECASE)
_UNITS = {"d": "day", "w": "week", "m": "month", "y": "year"}


@dataclass(frozen=True)
class Period:
    """The days the report covers, both ends included (UTC calendar days)."""

    start: date
    end: date
    label: str

    def weeks(self) -> list[str]:
        """Mondays of the ISO weeks that overlap the period, as 'YYYY-MM-DD'."""
        monday = self.start - timedelta(days=self.start.weekday())
        out = []
        while monday <= self.end:
            out.append(monday.isoformat())
            monday += timedelta(days=7)
        return out

    def months(self) -> list[str]:
        """First days of the months that overlap the period, as 'YYYY-MM-DD'."""
        year, month = self.start.year, self.start.month
        out = []
        while (year, month) <= (self.end.year, self.end.month):
            out.append(date(year, month, 1).isoformat())
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
        return out


def parse_period(text: str, as_of: date) -> Period:
    """`12w`, `90d`, `6m` or `1y` ending on `as_of` (included); weeks and months are whole calendar ones.

    `12w` is the ISO week of `as_of` and the 11 before it; `6m` its month and the 5 before it.
    """
    match = _PERIOD.match(text)
    if not match or int(match.group(1)) < 1:
        raise ConfigError(f"--period {text!r}: expected a count and a unit, e.g. 12w, 90d, 6m or 1y")
    n, unit = int(match.group(1)), match.group(2).lower()
    if unit == "d":
        start = as_of - timedelta(days=n - 1)
    elif unit == "w":
        start = as_of - timedelta(days=as_of.weekday()) - timedelta(weeks=n - 1)
    else:
        months = n if unit == "m" else 12 * n
        index = as_of.year * 12 + as_of.month - 1 - (months - 1)
        start = date(index // 12, index % 12 + 1, 1)
    label = f"{n} {_UNITS[unit]}{'s' if n != 1 else ''}"
    return Period(start=start, end=as_of, label=label)


# ---------------------------------------------------------------- value normalisation


def _day(value: Any) -> str | None:
    """A view's date (text on SQLite, date / datetime on PostgreSQL) as 'YYYY-MM-DD'."""
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC).date().isoformat() if value.tzinfo else value.date().isoformat()
    return str(value)[:10]


def _month_of(value: Any) -> str | None:
    """The first day of a timestamp's UTC month, as 'YYYY-MM-01'."""
    day = _day(value)
    return day[:8] + "01" if day else None


def _num(value: Any) -> float | None:
    """Decimal (PostgreSQL numeric), int and float alike as float; None stays None."""
    if value is None:
        return None
    return float(value)


def _int(value: Any) -> int:
    return int(value or 0)


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def _median(values: Iterable[float]) -> float | None:
    vals = list(values)
    return float(statistics.median(vals)) if vals else None


def _p90(values: Iterable[float]) -> float | None:
    """Nearest-rank 90th percentile, the definition `v_authorization_turnaround` uses."""
    vals = sorted(values)
    if not vals:
        return None
    rank = -(-9 * len(vals) // 10)  # ceil(0.9 n) without float rounding
    return float(vals[rank - 1])


# ---------------------------------------------------------------- queries


def _rows(
    conn: Connection, sql: str, endpoints: Sequence[str] | None, params: Mapping[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Rows of one SELECT over a view (with its bound `params`), limited to `endpoints` when given."""
    params = dict(params or {})
    if endpoints:
        sql = f"SELECT * FROM ({sql}) q WHERE q.endpoint IN :endpoints"
        params["endpoints"] = list(endpoints)
    stmt = sa.text(sql)
    if endpoints:
        stmt = stmt.bindparams(sa.bindparam("endpoints", expanding=True))
    return [dict(row._mapping) for row in conn.execute(stmt, params)]


def _payer_names(conn: Connection, endpoints: Sequence[str] | None) -> dict[str, str]:
    """payer_key -> a name people recognise: the synced Organization's name (`v_source_names`), else the
    payer's display where a view has one, else "unknown (Organization/…)" for a reference (see `_named`)."""
    names: dict[str, str] = {}
    for view in ("v_payer_mix", "v_authorization_turnaround"):
        for row in _rows(conn, f"SELECT endpoint, payer_key, payer_display FROM {view}", endpoints):
            if row["payer_display"] and row["payer_key"]:
                names.setdefault(row["payer_key"], row["payer_display"])
    for row in _rows(
        conn, "SELECT endpoint, source_ref, name FROM v_source_names WHERE name IS NOT NULL", endpoints
    ):
        names[row["source_ref"]] = row["name"]
    return names


def _named(key: str | None, names: Mapping[str, str]) -> str:
    """A payer's name: from `names`, else the one bucket of its reference's type, else the key itself (an
    identifier or a display, which are no resource ids); `unknown` without a key."""
    if not key or key == "unknown":
        return "unknown"
    if key in names:
        return names[key]
    return shown(key)


_DAYS = (*(c for c, _ in FUNNEL_MEDIANS), "median_days_acknowledged_to_scheduled")
#: Funnel column -> the `_counts` step it sums.
_FUNNEL_FROM = {
    "received": "referrals",
    "acknowledged": "acknowledged",
    "evaluation_scheduled": "evaluations_scheduled",
    "evaluation_attended": "evaluations_attended",
}
_WEEKLY_STEPS = (
    "referrals",
    "intake_complete",
    "acknowledged",
    "evaluations_scheduled",
    "evaluations_attended",
)


def _received_bounds(conn: Connection, period: Period) -> dict[str, Any]:
    """`:start` / `:end` of the period's days (UTC), ends included, as the dialect compares `received_at`."""
    start = datetime.combine(period.start, datetime.min.time(), UTC)
    end = start + timedelta(days=(period.end - period.start).days + 1)
    # SQLite keeps timestamps as naive UTC text, which compares as text; PostgreSQL compares timestamptz.
    if conn.dialect.name == "sqlite":
        return {"start": start.strftime("%Y-%m-%d %H:%M:%S"), "end": end.strftime("%Y-%m-%d %H:%M:%S")}
    return {"start": start, "end": end}


def _received_in(conn: Connection, period: Period, endpoints: Sequence[str] | None) -> list[dict[str, Any]]:
    """The `v_referral_facts` rows of the referrals received on the period's days (UTC), ends included."""
    steps = ", ".join(f"days_{c.removeprefix('median_days_')}" for c in _DAYS)
    return _rows(
        conn,
        "SELECT endpoint, source, discipline, received_at, intake_complete, acknowledged_at, scheduled, "
        f"attended, {steps} FROM v_referral_facts WHERE received_at >= :start AND received_at < :end",
        endpoints,
        _received_bounds(conn, period),
    )


def _loop_totals(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    evaluated = [r for r in rows if r["evaluation_attended_at"] is not None]
    updated = sum(_int(r["updated_within_7_days"]) for r in evaluated)
    return {
        "referrals": len(rows),
        "evaluated": len(evaluated),
        "updated_within_7_days": updated,
        "share_updated_within_7_days": _rate(updated, len(evaluated)),
        "median_days_to_first_update": _median(
            float(r["days_to_first_update"]) for r in rows if r["days_to_first_update"] is not None
        ),
        "summaries_sent": sum(_int(r["summaries_sent"]) for r in rows),
        "task_updates_sent": sum(_int(r["task_updates_sent"]) for r in rows),
    }


def _loop(conn: Connection, period: Period, endpoints: Sequence[str] | None) -> dict[str, Any]:
    """Closing the loop, for the referrals received in the period (the KPIs' referrals): the whole period
    and its top sources by evaluations."""
    rows = _rows(
        conn,
        "SELECT endpoint, source, evaluation_attended_at, days_to_first_update, updated_within_7_days, "
        "summaries_sent, task_updates_sent FROM v_referral_loop "
        "WHERE received_at >= :start AND received_at < :end",
        endpoints,
        _received_bounds(conn, period),
    )
    per_source: defaultdict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        per_source[row["source"] or "unknown"].append(row)
    sources = [{"source": name, **_loop_totals(group)} for name, group in per_source.items()]
    sources.sort(key=lambda s: (-s["evaluated"], -s["referrals"], s["source"]))
    return {
        **_loop_totals(rows),
        "sources": sources[:TOP_SOURCES_TABLE],
        "notified": _notified(conn, period, endpoints),
    }


def _notified(conn: Connection, period: Period, endpoints: Sequence[str] | None) -> dict[str, Any]:
    """The period's referrals that came by a Subscription notification: seconds from it to their Task."""
    if not sa.inspect(conn).has_table("intake_latency"):
        return {"referrals": 0, "median_seconds": None, "p95_seconds": None}
    rows = _rows(
        conn,
        "SELECT l.endpoint, l.seconds FROM intake_latency l JOIN v_referral_loop r "
        "ON r.endpoint = l.endpoint AND r.referral_id = l.referral_id "
        "WHERE l.seconds IS NOT NULL AND r.received_at >= :start AND r.received_at < :end",
        endpoints,
        _received_bounds(conn, period),
    )
    seconds = [float(r["seconds"]) for r in rows]
    median, p95 = latency_figures(seconds)
    return {"referrals": len(seconds), "median_seconds": median, "p95_seconds": p95}


def _counts(fact: Mapping[str, Any]) -> dict[str, int]:
    """One referral's steps, with the names of both the weekly view and the funnel view."""
    return {
        "referrals": 1,
        "intake_complete": _int(fact["intake_complete"]),
        "acknowledged": int(fact["acknowledged_at"] is not None),
        "evaluations_scheduled": _int(fact["scheduled"]),
        "evaluations_attended": _int(fact["attended"]),
    }


def _weekly(facts: Sequence[Mapping[str, Any]], period: Period) -> dict[str, Any]:
    weeks = period.weeks()
    totals = {w: dict.fromkeys(_WEEKLY_STEPS, 0) for w in weeks}
    by_discipline: Counter[tuple[str, str]] = Counter()
    by_source: Counter[tuple[str, str]] = Counter()
    source_total: Counter[str] = Counter()
    for fact in facts:
        day = date.fromisoformat(_day(fact["received_at"]) or "")
        week = (day - timedelta(days=day.weekday())).isoformat()
        for step, n in _counts(fact).items():
            totals[week][step] += n
        source = fact["source"] or "unknown"
        by_discipline[(week, fact["discipline"] or "other")] += 1
        by_source[(week, source)] += 1
        source_total[source] += 1
    # Ties broken by name so the same warehouse always gives the same page.
    top = [s for s, _ in sorted(source_total.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_SOURCES_WEEKLY]]
    grouped: Counter[tuple[str, str]] = Counter()
    for (week, source), n in by_source.items():
        grouped[(week, source if source in top else "other sources")] += n
    disciplines = sorted({d for _, d in by_discipline})
    return {
        "weeks": weeks,
        "totals": [{"week": w, **totals[w]} for w in weeks],
        "disciplines": disciplines,
        "by_discipline": [
            {"week": w, "discipline": d, "referrals": by_discipline[(w, d)]}
            for w in weeks
            for d in disciplines
            if by_discipline[(w, d)]
        ],
        "sources": top + (["other sources"] if len(source_total) > len(top) else []),
        "by_source": [{"week": w, "source": s, "referrals": n} for (w, s), n in sorted(grouped.items()) if n],
        "referrals": len(facts),
    }


def _funnel_row(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Steps and median days of some referrals (`statistics.median`: the views' median, which averages the
    two middle values of an even count)."""
    steps = [_counts(f) for f in facts]
    row: dict[str, Any] = {column: sum(s[step] for s in steps) for column, step in _FUNNEL_FROM.items()}
    for column in _DAYS:
        days = f"days_{column.removeprefix('median_days_')}"
        row[column] = _median(float(f[days]) for f in facts if f[days] is not None)
    return row


def _funnel(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    per_month: defaultdict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for fact in facts:
        per_month[(_month_of(fact["received_at"]) or "", fact["endpoint"])].append(fact)
    months = [
        {"endpoint": endpoint, "month": month, **_funnel_row(rows)}
        for (month, endpoint), rows in sorted(per_month.items())
    ]
    whole = _funnel_row(facts)
    totals = {c: whole[c] for c, _ in FUNNEL_STEPS}
    received = totals["received"]
    steps = [
        {"step": label, "order": i, "referrals": totals[c], "share_of_received": _rate(totals[c], received)}
        for i, (c, label) in enumerate(FUNNEL_STEPS)
    ]
    medians = {c: whole[c] for c in _DAYS}
    return {"months": months, "totals": totals, "medians": medians, "steps": steps}


def _sources(conn: Connection, endpoints: Sequence[str] | None) -> list[dict[str, Any]]:
    rows = _rows(
        conn,
        "SELECT endpoint, source, source_type, referrals_last_90_days, referrals_prior_90_days, trend, "
        "trend_pct, evaluations_attended_last_90_days, conversion_rate, incomplete_intakes_last_90_days, "
        "incomplete_intake_share FROM v_referral_sources",
        endpoints,
    )
    out: list[dict[str, Any]] = [
        {
            "endpoint": r["endpoint"],
            "source": r["source"] or "unknown",
            "source_type": r["source_type"] or "unknown",
            "last_90_days": _int(r["referrals_last_90_days"]),
            "prior_90_days": _int(r["referrals_prior_90_days"]),
            "trend": _int(r["trend"]),
            "trend_pct": _num(r["trend_pct"]),
            "attended": _int(r["evaluations_attended_last_90_days"]),
            "conversion_rate": _num(r["conversion_rate"]),
            "incomplete_intakes": _int(r["incomplete_intakes_last_90_days"]),
            "incomplete_share": _num(r["incomplete_intake_share"]),
        }
        for r in rows
    ]
    out.sort(key=lambda s: (-s["last_90_days"], -s["prior_90_days"], s["source"], s["endpoint"]))
    return out[:TOP_SOURCES_TABLE]


def _eligibility(conn: Connection, period: Period, endpoints: Sequence[str] | None) -> dict[str, Any]:
    wanted = set(period.months())
    per_month: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in _rows(
        conn,
        "SELECT endpoint, month, patients_with_first_visit, verified_before_visit "
        "FROM v_eligibility_before_first_visit",
        endpoints,
    ):
        month = _day(r["month"])
        if month in wanted:
            # Summed over endpoints and the rate recomputed: rates themselves do not add up.
            per_month[month][0] += _int(r["patients_with_first_visit"])
            per_month[month][1] += _int(r["verified_before_visit"])
    months: list[dict[str, Any]] = [
        {"month": m, "patients": p, "verified": v, "rate": _rate(v, p)}
        for m, (p, v) in sorted(per_month.items())
    ]
    patients = sum(m["patients"] for m in months)
    verified = sum(m["verified"] for m in months)
    return {"months": months, "patients": patients, "verified": verified, "rate": _rate(verified, patients)}


def _prior_auth(
    conn: Connection, period: Period, endpoints: Sequence[str] | None, names: Mapping[str, str]
) -> dict[str, Any]:
    # Medians over the whole period cannot be made from monthly medians, so they come from the row-level
    # view `prior_authorization` (only payer, decision, dates and days are read: no patient or claim ids).
    rows = _rows(
        conn,
        "SELECT endpoint, payer_key, decision, requested_at, decided_at, turnaround_days "
        "FROM prior_authorization WHERE requested_at IS NOT NULL",
        endpoints,
    )
    first, last = period.start.isoformat(), period.end.isoformat()
    per_payer: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        day = _day(r["requested_at"]) or ""
        if first <= day <= last:
            per_payer[_named(r["payer_key"], names)].append(r)
    by_payer = []
    for payer, items in per_payer.items():
        days = [_num(i["turnaround_days"]) for i in items if i["turnaround_days"] is not None]
        decided = [i for i in items if i["decided_at"] is not None]
        by_payer.append(
            {
                "payer": payer,
                "requested": len(items),
                "decided": len(decided),
                "approved": sum(i["decision"] in ("approved", "modified", "partial") for i in decided),
                "denied": sum(i["decision"] == "denied" for i in decided),
                "pending": sum(i["decision"] == "pending" for i in items),
                "median_days": _median(d for d in days if d is not None),
                "p90_days": _p90(d for d in days if d is not None),
            }
        )
    by_payer.sort(key=lambda p: (-p["requested"], p["payer"]))
    all_days = [
        d for items in per_payer.values() for i in items if (d := _num(i["turnaround_days"])) is not None
    ]
    # Monthly medians from the same requests as the table (the view's are per whole month and per key).
    per_month: defaultdict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for payer, items in per_payer.items():
        for i in items:
            per_month[(_month_of(i["requested_at"]) or "", payer)].append(i)
    monthly = []
    for (month, payer), items in per_month.items():
        month_days = [float(i["turnaround_days"]) for i in items if i["turnaround_days"] is not None]
        if month_days:
            monthly.append(
                {"month": month, "payer": payer, "requested": len(items), "median_days": _median(month_days)}
            )
    pending_now = expiring = 0
    for r in _rows(
        conn, "SELECT endpoint, pending_now, expiring_next_14_days FROM v_authorization_turnaround", endpoints
    ):
        # Pending and expiring are "now" counts: every request month counts, not only the period's.
        pending_now += _int(r["pending_now"])
        expiring += _int(r["expiring_next_14_days"])
    monthly.sort(key=lambda m: (m["month"], m["payer"]))
    return {
        "by_payer": by_payer,
        "monthly": monthly,
        "requested": sum(p["requested"] for p in by_payer),
        "median_days": _median(all_days),
        "pending_now": pending_now,
        "expiring_next_14_days": expiring,
    }


# Adjudicated lines per payer and month, counted as `v_denials_by_reason` counts them (the same rule,
# from connector.warehouse.claim_decisions).
# Read here because that view only has rows for months with at least one denial: a payer's months
# without denials would otherwise be missing from its denial rate's denominator.
_ADJUDICATED_LINES = f"""WITH {COUNTED_DECISIONS}
SELECT a.endpoint, a.payer_key, a.created, a.line_count FROM eff a
WHERE a.outcome IN {ADJUDICATED_OUTCOMES}"""


def _denials(
    conn: Connection, period: Period, endpoints: Sequence[str] | None, names: Mapping[str, str]
) -> dict[str, Any]:
    wanted = set(period.months())
    adjudicated: Counter[str] = Counter()
    for r in _rows(conn, _ADJUDICATED_LINES, endpoints):
        if _month_of(r["created"]) in wanted:
            adjudicated[_named(r["payer_key"], names)] += _int(r["line_count"])
    denied: Counter[str] = Counter()
    denied_amount: defaultdict[str, float] = defaultdict(float)
    cat_lines: Counter[str] = Counter()
    cat_amount: defaultdict[str, float] = defaultdict(float)
    for r in _rows(
        conn,
        "SELECT endpoint, month, payer, category, denied_lines, denied_amount FROM v_denials_by_reason",
        endpoints,
    ):
        if _day(r["month"]) not in wanted:
            continue
        payer = _named(r["payer"], names)
        denied[payer] += _int(r["denied_lines"])
        denied_amount[payer] += _num(r["denied_amount"]) or 0.0
        cat_lines[r["category"]] += _int(r["denied_lines"])
        cat_amount[r["category"]] += _num(r["denied_amount"]) or 0.0
    total_lines = sum(adjudicated.values())
    by_payer: list[dict[str, Any]] = [
        {
            "payer": payer,
            "adjudicated_lines": adjudicated[payer],
            "denied_lines": denied[payer],
            "denial_rate": _rate(denied[payer], adjudicated[payer]),
            "denied_amount": round(denied_amount[payer], 2),
        }
        for payer in set(adjudicated) | set(denied)
    ]
    by_payer.sort(key=lambda p: (-p["adjudicated_lines"], p["payer"]))
    by_category: list[dict[str, Any]] = [
        {
            "category": cat,
            "denied_lines": n,
            "share_of_adjudicated": _rate(n, total_lines),
            "denied_amount": round(cat_amount[cat], 2),
        }
        for cat, n in cat_lines.items()
    ]
    by_category.sort(key=lambda c: (-c["denied_lines"], c["category"]))
    clean: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in _rows(
        conn,
        "SELECT endpoint, month, payer, adjudicated_claims, clean_claims FROM v_clean_claim_rate",
        endpoints,
    ):
        if _day(r["month"]) in wanted:
            payer = _named(r["payer"], names)
            clean[payer][0] += _int(r["adjudicated_claims"])
            clean[payer][1] += _int(r["clean_claims"])
    clean_rows: list[dict[str, Any]] = [
        {
            "payer": k,
            "adjudicated_claims": a,
            "clean_claims": c,
            "clean_claim_rate": _rate(c, a),
        }
        for k, (a, c) in clean.items()
    ]
    clean_rows.sort(key=lambda p: (-p["adjudicated_claims"], p["payer"]))
    total_denied = sum(denied.values())
    claims = sum(a for a, _ in clean.values())
    return {
        "by_payer": by_payer,
        "by_category": by_category,
        "clean_claims": clean_rows,
        "adjudicated_lines": total_lines,
        "denied_lines": total_denied,
        "denial_rate": _rate(total_denied, total_lines),
        "clean_claim_rate": _rate(sum(c for _, c in clean.values()), claims),
    }


def _queue(conn: Connection, endpoints: Sequence[str] | None) -> dict[str, Any]:
    """The open denial queue now (not limited to the period: an old open denial is still work)."""
    rows = _rows(
        conn, "SELECT endpoint, status, category, denied_amount, age_days FROM v_denial_queue", endpoints
    )
    ages = [_int(r["age_days"]) for r in rows]
    buckets: list[dict[str, Any]] = []
    lower = 0
    for label, upper in QUEUE_AGE_BUCKETS:
        inside = [
            r
            for r in rows
            if _int(r["age_days"]) >= lower and (upper is None or _int(r["age_days"]) <= upper)
        ]
        buckets.append(
            {
                "bucket": label,
                "order": len(buckets),
                "lines": len(inside),
                "amount": round(sum(_num(r["denied_amount"]) or 0.0 for r in inside), 2),
            }
        )
        lower = (upper or 0) + 1
    per_category: dict[str, list[Any]] = defaultdict(lambda: [0, 0.0, 0])
    for r in rows:
        entry = per_category[r["category"]]
        entry[0] += 1
        entry[1] += _num(r["denied_amount"]) or 0.0
        entry[2] = max(entry[2], _int(r["age_days"]))
    by_category: list[dict[str, Any]] = [
        {"category": c, "lines": n, "amount": round(a, 2), "oldest_days": o}
        for c, (n, a, o) in per_category.items()
    ]
    by_category.sort(key=lambda c: (-c["lines"], c["category"]))
    return {
        "size": len(rows),
        "open": sum(r["status"] == "open" for r in rows),
        "appealed": sum(r["status"] == "appealed" for r in rows),
        "amount": round(sum(_num(r["denied_amount"]) or 0.0 for r in rows), 2),
        "median_age_days": _median(ages),
        "oldest_days": max(ages) if ages else None,
        "buckets": buckets,
        "by_category": by_category,
    }


def _payer_mix(
    conn: Connection, endpoints: Sequence[str] | None, names: Mapping[str, str]
) -> list[dict[str, Any]]:
    per: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for r in _rows(
        conn, "SELECT endpoint, payer_key, active_coverages, patients FROM v_payer_mix", endpoints
    ):
        payer = _named(r["payer_key"], names)
        per[payer][0] += _int(r["active_coverages"])
        per[payer][1] += _int(r["patients"])
    total = sum(c for c, _ in per.values())
    out: list[dict[str, Any]] = [
        {"payer": k, "active_coverages": c, "patients": p, "share": _rate(c, total)}
        for k, (c, p) in per.items()
    ]
    out.sort(key=lambda p: (-p["active_coverages"], p["payer"]))
    return out


def activity_weeks(engine: Engine) -> tuple[date, str] | None:
    """The Sunday of the newest week with referrals and the period (`<n>w`) back to the oldest such week: a
    report of a warehouse frozen in time (the demo) that holds every referral in it."""
    with engine.connect() as conn:
        first, last = conn.execute(sa.text("SELECT MIN(week), MAX(week) FROM v_referrals_weekly")).one()
    first_day, last_day = _day(first), _day(last)
    if not first_day or not last_day:
        return None
    weeks = (date.fromisoformat(last_day) - date.fromisoformat(first_day)).days // 7 + 1
    return date.fromisoformat(last_day) + timedelta(days=6), f"{weeks}w"


def collect(
    engine: Engine,
    period: Period,
    *,
    endpoints: Sequence[str] | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as plain dicts and lists (JSON-serialisable)."""
    with engine.connect() as conn:
        found = sorted(
            {r["endpoint"] for r in _rows(conn, "SELECT DISTINCT endpoint FROM referral", endpoints)}
        )
        names = _payer_names(conn, endpoints)
        # Every referral number of the page (KPIs, weekly charts, funnel) counts these same referrals.
        facts = _received_in(conn, period, endpoints)
        return {
            "period": {
                "start": period.start.isoformat(),
                "end": period.end.isoformat(),
                "label": period.label,
            },
            "generated_at": (now or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "endpoints": list(endpoints) if endpoints else found,
            # Amounts are shown after this currency (the claims'); none when the data says none.
            "currency": main_currency(conn),
            "referrals_weekly": _weekly(facts, period),
            "funnel": _funnel(facts),
            "loop": _loop(conn, period, endpoints),
            "sources": _sources(conn, endpoints),
            "eligibility": _eligibility(conn, period, endpoints),
            "prior_auth": _prior_auth(conn, period, endpoints, names),
            "denials": _denials(conn, period, endpoints, names),
            "queue": _queue(conn, endpoints),
            "payer_mix": _payer_mix(conn, endpoints, names),
        }
