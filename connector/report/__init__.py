"""`connector report`: one static HTML page (and optionally a PDF) of what the warehouse views say.

`data` reads the views into plain dicts, `charts` turns them into Vega-Lite specs, `render` writes the
self-contained page and `pdf` prints it with a headless Chromium.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from connector.report.data import Period, activity_weeks, collect, parse_period

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy.engine import Engine


@dataclass(frozen=True)
class ReportFiles:
    html: Path
    pdf: Path | None
    period: Period


def write_report(
    engine: Engine,
    out: Path,
    *,
    period: str = "12w",
    as_of: date | None = None,
    endpoints: Sequence[str] | None = None,
    pdf: bool = False,
    title: str = "Practice report",
) -> ReportFiles:
    """Read the views, write the HTML page to `out` (and `out` with `.pdf` when `pdf`); returns the paths."""
    # Imported here: the renderer loads the Vega bundle and jinja2, which the data-only callers do not need.
    from connector.report import render
    from connector.report.pdf import print_pdf

    span = parse_period(period, as_of or datetime.now(UTC).date())
    data = collect(engine, span, endpoints=endpoints)
    html = render.write_html(data, out, title=title)
    printed = print_pdf(html, html.with_suffix(".pdf")) if pdf else None
    return ReportFiles(html=html, pdf=printed, period=span)


__all__ = ["Period", "ReportFiles", "activity_weeks", "collect", "parse_period", "write_report"]
