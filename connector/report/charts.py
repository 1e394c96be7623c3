"""Vega-Lite specs of the report's charts, built from the dicts of `connector.report.data`.

Specs are plain JSON (Vega-Lite v6): the data is inlined as `values`, every mark has a tooltip with its
numbers, and weeks and months are ordinal axes of 'YYYY-MM-DD' labels, so the page shows the same dates
whatever time zone the reader's browser is in (temporal axes would shift them to local time).
"""

from __future__ import annotations

from typing import Any

#: A colour per discipline that stays the same across charts and reports.
DISCIPLINE_COLORS = {"PT": "#4c78a8", "OT": "#f58518", "SLP": "#54a24b", "other": "#9d9d9d"}

_HEIGHT = 220
# Counts are whole numbers: no 0.5 ticks, and few enough ticks that labels never collide.
_COUNT_AXIS = {"format": "d", "tickMinStep": 1, "tickCount": 8}
_MONTH_AXIS = {"labelAngle": 0}


def _base(title: str, values: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "anchor": "start", "fontSize": 13},
        "width": "container",
        "height": _HEIGHT,
        "autosize": {"type": "fit", "contains": "padding"},
        "data": {"values": values},
        "config": {"view": {"stroke": None}, "axis": {"labelFontSize": 11, "titleFontSize": 11}},
        **spec,
    }


def _count_scale(tallest: int) -> dict[str, Any]:
    """A count axis from 0 that holds the tallest bar (stacked bars are summed before they are drawn, and
    a domain left to the data can end below the stack's top: the bar then runs into the title)."""
    return {"domain": [0, max(tallest, 1)], "nice": True, "zero": True}


def _weekly_stacked(
    title: str,
    values: list[dict[str, Any]],
    weeks: list[str],
    field: str,
    label: str,
    color: dict[str, Any],
    tallest: int,
) -> dict[str, Any]:
    """Referrals per week as bars stacked by `field` (discipline or source); `tallest` is the biggest
    week's total."""
    return _base(
        title,
        values,
        mark={"type": "bar", "tooltip": True},
        encoding={
            "x": {
                "field": "week",
                "type": "ordinal",
                "title": "Week starting",
                "sort": weeks,
                "scale": {"domain": weeks},
            },
            "y": {
                "field": "referrals",
                "type": "quantitative",
                "aggregate": "sum",
                "title": "Referrals",
                "axis": _COUNT_AXIS,
                "scale": _count_scale(tallest),
            },
            "color": {"field": field, "type": "nominal", "title": label, **color},
            "tooltip": [
                {"field": "week", "title": "Week starting"},
                {"field": field, "title": label},
                {"field": "referrals", "type": "quantitative", "aggregate": "sum", "title": "Referrals"},
            ],
        },
    )


def _tallest_week(weekly: dict[str, Any]) -> int:
    return max((t["referrals"] for t in weekly["totals"]), default=0)


def referrals_by_discipline(weekly: dict[str, Any]) -> dict[str, Any]:
    disciplines = weekly["disciplines"]
    scale = {"domain": disciplines, "range": [DISCIPLINE_COLORS.get(d, "#9d9d9d") for d in disciplines]}
    return _weekly_stacked(
        "New referrals per week, by discipline",
        weekly["by_discipline"],
        weekly["weeks"],
        "discipline",
        "Discipline",
        {"scale": scale},
        _tallest_week(weekly),
    )


def referrals_by_source(weekly: dict[str, Any]) -> dict[str, Any]:
    return _weekly_stacked(
        "New referrals per week, by source",
        weekly["by_source"],
        weekly["weeks"],
        "source",
        "Source",
        {"sort": weekly["sources"], "scale": {"domain": weekly["sources"], "scheme": "tableau10"}},
        _tallest_week(weekly),
    )


def funnel(steps: list[dict[str, Any]]) -> dict[str, Any]:
    order = [s["step"] for s in steps]
    bars = {
        "mark": {"type": "bar", "tooltip": True, "color": "#4c78a8"},
        "encoding": {
            "y": {"field": "step", "type": "ordinal", "sort": order, "title": None},
            "x": {
                "field": "referrals",
                "type": "quantitative",
                "title": "Referrals",
                "axis": _COUNT_AXIS,
                # Room for the count written after the longest bar.
                "scale": _count_scale(round(1.15 * max((s["referrals"] for s in steps), default=0))),
            },
            "tooltip": [
                {"field": "step", "title": "Step"},
                {"field": "referrals", "type": "quantitative", "title": "Referrals"},
                {
                    "field": "share_of_received",
                    "type": "quantitative",
                    "format": ".0%",
                    "title": "Share of received",
                },
            ],
        },
    }
    labels = {
        "mark": {"type": "text", "align": "left", "dx": 4},
        "encoding": {
            "y": {"field": "step", "type": "ordinal", "sort": order},
            "x": {"field": "referrals", "type": "quantitative"},
            "text": {"field": "referrals", "type": "quantitative"},
        },
    }
    spec = _base("Referral funnel over the period", steps, layer=[bars, labels])
    spec["height"] = 160
    return spec


def source_trend(sources: list[dict[str, Any]]) -> dict[str, Any]:
    values = [
        {"source": s["source"], "window": window, "referrals": s[key]}
        for s in sources[:10]
        for window, key in (("prior 90 days", "prior_90_days"), ("last 90 days", "last_90_days"))
    ]
    order = [s["source"] for s in sources[:10]]
    spec = _base(
        "Top referral sources: last 90 days against the 90 before",
        values,
        mark={"type": "bar", "tooltip": True},
        encoding={
            "y": {"field": "source", "type": "nominal", "sort": order, "title": None},
            "x": {
                "field": "referrals",
                "type": "quantitative",
                "title": "Referrals",
                "axis": _COUNT_AXIS,
                "scale": _count_scale(max((v["referrals"] for v in values), default=0)),
            },
            "yOffset": {"field": "window", "sort": ["prior 90 days", "last 90 days"]},
            "color": {
                "field": "window",
                "type": "nominal",
                "title": None,
                "sort": ["prior 90 days", "last 90 days"],
                "scale": {"range": ["#bab0ac", "#4c78a8"]},
            },
            "tooltip": [
                {"field": "source", "title": "Source"},
                {"field": "window", "title": "Window"},
                {"field": "referrals", "type": "quantitative", "title": "Referrals"},
            ],
        },
    )
    spec["height"] = max(_HEIGHT, 28 * len(order))
    return spec


def _by_month(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with `month` shown as 'YYYY-MM' (the day is always the 1st)."""
    return [{**r, "month": r["month"][:7]} for r in rows]


def eligibility_rate(months: list[dict[str, Any]]) -> dict[str, Any]:
    return _base(
        "Eligibility verified before the first visit, per month of first visit",
        _by_month(months),
        mark={"type": "line", "point": True, "tooltip": True, "color": "#54a24b"},
        encoding={
            "x": {"field": "month", "type": "ordinal", "title": "Month", "axis": _MONTH_AXIS},
            "y": {
                "field": "rate",
                "type": "quantitative",
                "title": "Verified before visit",
                "axis": {"format": ".0%"},
                "scale": {"domain": [0, 1]},
            },
            "tooltip": [
                {"field": "month", "title": "Month"},
                {"field": "patients", "type": "quantitative", "title": "Patients with a first visit"},
                {"field": "verified", "type": "quantitative", "title": "Verified before it"},
                {"field": "rate", "type": "quantitative", "format": ".0%", "title": "Rate"},
            ],
        },
    )


def authorization_turnaround(monthly: list[dict[str, Any]]) -> dict[str, Any]:
    return _base(
        "Prior-authorization turnaround: median days per month of request",
        _by_month(monthly),
        mark={"type": "line", "point": True, "tooltip": True},
        encoding={
            "x": {"field": "month", "type": "ordinal", "title": "Month requested", "axis": _MONTH_AXIS},
            "y": {"field": "median_days", "type": "quantitative", "title": "Median days to decision"},
            "color": {
                "field": "payer",
                "type": "nominal",
                "title": "Payer",
                "scale": {"scheme": "tableau10"},
            },
            "tooltip": [
                {"field": "month", "title": "Month"},
                {"field": "payer", "title": "Payer"},
                {"field": "requested", "type": "quantitative", "title": "Requests"},
                {"field": "median_days", "type": "quantitative", "format": ".1f", "title": "Median days"},
            ],
        },
    )


def denial_rate_by_payer(by_payer: list[dict[str, Any]]) -> dict[str, Any]:
    values = [p for p in by_payer if p["denial_rate"] is not None]
    spec = _base(
        "Denial rate by payer (denied or reduced lines of adjudicated lines)",
        values,
        mark={"type": "bar", "tooltip": True, "color": "#e45756"},
        encoding={
            "y": {"field": "payer", "type": "nominal", "sort": "-x", "title": None},
            "x": {
                "field": "denial_rate",
                "type": "quantitative",
                "title": "Denial rate",
                "axis": {"format": ".0%"},
            },
            "tooltip": [
                {"field": "payer", "title": "Payer"},
                {"field": "denied_lines", "type": "quantitative", "title": "Denied lines"},
                {"field": "adjudicated_lines", "type": "quantitative", "title": "Adjudicated lines"},
                {"field": "denial_rate", "type": "quantitative", "format": ".1%", "title": "Denial rate"},
            ],
        },
    )
    spec["height"] = max(120, 28 * len(values))
    return spec


def denials_by_category(by_category: list[dict[str, Any]]) -> dict[str, Any]:
    spec = _base(
        "Denied lines by reason category",
        by_category,
        mark={"type": "bar", "tooltip": True, "color": "#e45756"},
        encoding={
            "y": {"field": "category", "type": "nominal", "sort": "-x", "title": None},
            "x": {
                "field": "denied_lines",
                "type": "quantitative",
                "title": "Denied lines",
                "axis": _COUNT_AXIS,
            },
            "tooltip": [
                {"field": "category", "title": "Category"},
                {"field": "denied_lines", "type": "quantitative", "title": "Denied lines"},
                {
                    "field": "share_of_adjudicated",
                    "type": "quantitative",
                    "format": ".1%",
                    "title": "Share of adjudicated lines",
                },
                {"field": "denied_amount", "type": "quantitative", "format": ",.2f", "title": "Amount"},
            ],
        },
    )
    spec["height"] = max(120, 28 * len(by_category))
    return spec


def queue_age(buckets: list[dict[str, Any]]) -> dict[str, Any]:
    order = [b["bucket"] for b in buckets]
    return _base(
        "Open denial queue by age",
        buckets,
        mark={"type": "bar", "tooltip": True, "color": "#b279a2"},
        encoding={
            "x": {
                "field": "bucket",
                "type": "ordinal",
                "sort": order,
                "title": "Age since the decision",
                "axis": {"labelAngle": 0},
            },
            "y": {
                "field": "lines",
                "type": "quantitative",
                "title": "Denied lines",
                "axis": _COUNT_AXIS,
                "scale": _count_scale(max((b["lines"] for b in buckets), default=0)),
            },
            "tooltip": [
                {"field": "bucket", "title": "Age"},
                {"field": "lines", "type": "quantitative", "title": "Denied lines"},
                {"field": "amount", "type": "quantitative", "format": ",.2f", "title": "Amount"},
            ],
        },
    )


def build(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Chart id -> spec, only for charts with something to show (an empty chart helps nobody)."""
    weekly = data["referrals_weekly"]
    charts: dict[str, dict[str, Any]] = {}
    if weekly["by_discipline"]:
        charts["referrals-by-discipline"] = referrals_by_discipline(weekly)
    if weekly["by_source"]:
        charts["referrals-by-source"] = referrals_by_source(weekly)
    if data["funnel"]["totals"]["received"]:
        charts["referral-funnel"] = funnel(data["funnel"]["steps"])
    if data["sources"]:
        charts["source-trend"] = source_trend(data["sources"])
    if any(m["rate"] is not None for m in data["eligibility"]["months"]):
        charts["eligibility-rate"] = eligibility_rate(data["eligibility"]["months"])
    if data["prior_auth"]["monthly"]:
        charts["authorization-turnaround"] = authorization_turnaround(data["prior_auth"]["monthly"])
    if any(p["denial_rate"] is not None for p in data["denials"]["by_payer"]):
        charts["denial-rate-by-payer"] = denial_rate_by_payer(data["denials"]["by_payer"])
    if data["denials"]["by_category"]:
        charts["denials-by-category"] = denials_by_category(data["denials"]["by_category"])
    if data["queue"]["size"]:
        charts["queue-age"] = queue_age(data["queue"]["buckets"])
    return charts
