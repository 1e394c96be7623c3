"""The report as one self-contained HTML file: tables by jinja2, charts by Vega-Lite.

The Vega, Vega-Lite and Vega-Embed JavaScript comes from the `vl-convert-python` wheel
(`vl_convert.javascript_bundle()`, about 0.9 MB minified) and is inlined, so the page opens offline, from
an e-mail attachment or a file share, and needs no CDN.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import jinja2
import orjson
import vl_convert
from markupsafe import Markup

from connector.report import charts as chart_specs
from connector.report.data import FUNNEL_MEDIANS, FUNNEL_STEPS
from connector.warehouse.summary import money


@functools.cache
def vega_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one script that sets `window.vegaEmbed` (built once per process,
    about 1.5 s: vl-convert bundles the modules it embeds)."""
    # The stub says `snippet` is required; the function takes None (the whole bundle, no snippet).
    return vl_convert.javascript_bundle(None)  # type: ignore[arg-type]


def _script_json(value: Any) -> Markup:
    """JSON safe inside a <script> element: '<' escaped so a name like '</script>' cannot end it."""
    text = orjson.dumps(value).decode().replace("<", "\\u003c")
    return Markup(text)  # noqa: S704 - escaped above; JSON is not HTML


#: What an empty cell shows (no data, or a rate over nothing): an en dash.
_BLANK = "\u2013"


def _pct(value: float | None, digits: int = 0) -> str:
    return _BLANK if value is None else f"{value * 100:.{digits}f}%"


def _days(value: float | None) -> str:
    return _BLANK if value is None else f"{value:.1f}"


def _money(value: float | None, currency: str | None = None) -> str:
    return _BLANK if value is None else money(value, currency)


def _count(value: int | None) -> str:
    return _BLANK if value is None else f"{value:,}"


def _signed(value: int | None) -> str:
    return _BLANK if value is None else f"{value:+d}"


@functools.cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("connector.report", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,  # a renamed data key fails the render instead of showing blank
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(pct=_pct, days=_days, money=_money, count=_count, signed=_signed)
    return env


def render_html(data: dict[str, Any], *, title: str = "Practice report") -> str:
    """The whole page for the dicts of `connector.report.data.collect`."""
    specs = chart_specs.build(data)
    return (
        _environment()
        .get_template("report.html.j2")
        .render(
            title=title,
            d=data,
            charts=specs,
            specs_json=_script_json(specs),
            vega_js=Markup(vega_bundle().replace("</script", "<\\/script")),  # noqa: S704 - our own bundle
            funnel_steps=FUNNEL_STEPS,
            funnel_medians=FUNNEL_MEDIANS,
            multi_endpoint=len(data["endpoints"]) > 1,
        )
    )


def write_html(data: dict[str, Any], out: Path, *, title: str = "Practice report") -> Path:
    """Render and write the page; returns the absolute path."""
    out = out.expanduser().resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(data, title=title), encoding="utf-8")
    return out
