"""`connector report`: the numbers read from the views of a small fixed warehouse (hand-computed), the page
that shows them, and the command end to end. SQLite and PostgreSQL through the `engine` fixture.

Dates are relative to today, because `v_referral_sources` and the denial queue's ages are relative to the
time the views are read.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from connector.cli import app
from connector.errors import ConfigError
from connector.report import charts, data, write_report
from connector.report.render import render_html, vega_bundle
from tests.test_denial_builders import claim, response
from tests.test_payer_builders import ENDPOINT, eligibility_response, load, preauth_claim, preauth_response

CPT = "http://www.ama-assn.org/go/cpt"
# A minute ago, not today's noon: ages are whole days elapsed since, so an instant `days` ago must be at
# least `days` whole days old at any hour the suite runs.
TODAY = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)


def at(days: int) -> str:
    """An instant `days` days from TODAY (negative: in the past)."""
    return (TODAY + timedelta(days=days)).strftime("%Y-%m-%dT%H:%M:%SZ")


def monday(days: int) -> str:
    day = (TODAY + timedelta(days=days)).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def service_request(rid: str, authored: str, referrer: str, code: str, *, complete: bool) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": authored},
        "status": "active",
        "intent": "order",
        "code": {"coding": [{"system": CPT, "code": code}]},
        "subject": {"reference": f"Patient/{rid}-pt"},
        "requester": {"display": referrer},
        "authoredOn": authored,
        "reasonCode": [{"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "M54.50"}]}],
        "occurrenceDateTime": authored[:10],
    }
    if complete:
        resource["insurance"] = [{"reference": f"Coverage/{rid}"}]
    return resource


def appointment(aid: str, sr: str, patient: str, status: str, *, created: str, start: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": aid,
        "meta": {"versionId": "1", "lastUpdated": created},
        "status": status,
        "serviceType": [{"coding": [{"system": CPT, "code": "97161"}]}],
        "basedOn": [{"reference": f"ServiceRequest/{sr}"}],
        "created": created,
        "start": start,
        "end": start,
        "participant": [{"actor": {"reference": patient}, "status": "accepted"}],
    }


def organization(oid: str, name: str) -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "id": oid,
        "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
        "active": True,
        "name": name,
    }


def scenario() -> list[dict[str, Any]]:
    """The fixed warehouse; comments say what the report must show."""
    return [
        # Referrals: Dr. Ada sends a PT (97161) and an OT (97165, intake incomplete: no insurance) referral
        # 10 days ago, Dr. Bo a PT referral 3 days ago. 10 and 3 days back are always different ISO weeks.
        service_request("sr1", at(-10), "Dr. Ada", "97161", complete=True),
        service_request("sr2", at(-10), "Dr. Ada", "97165", complete=False),
        service_request("sr3", at(-3), "Dr. Bo", "97161", complete=True),
        # sr1's evaluation was booked 8 days ago and attended 5 days ago; sr2's is booked for yesterday.
        appointment("a1", "sr1", "Patient/p1", "fulfilled", created=at(-8), start=at(-5)),
        appointment("a2", "sr2", "Patient/p2", "booked", created=at(-9), start=at(-1)),
        # p1's eligibility was verified 12 days ago (before the first visit); p2's never.
        eligibility_response("elig-1", at(-12), patient="Patient/p1"),
        # Prior auths at Organization/pA: decided after 4 and 10 days, one pending -> median 7.0.
        preauth_claim("pa-1", at(-20)),
        preauth_response("par-1", at(-16), request="Claim/pa-1", actions={1: "A1", 2: "A1"}),
        preauth_claim("pa-2", at(-15)),
        preauth_response("par-2", at(-5), request="Claim/pa-2", actions={1: "A1", 2: "A1"}),
        preauth_claim("pa-3", at(-2)),
        # Claims: payer A adjudicates 3 lines and denies 1 (CO-197, authorization), payer B 1 line and
        # denies it (50, medical necessity) -> 33.3 % and 100 %, 50 % overall. Both denials stay open.
        claim("c1", at(-30), [(1, "97110", 100.0), (2, "97530", 50.0)]),
        response("r1", "c1", at(-20), [(1, 100.0, 0.0, "CO-197"), (2, 50.0, 40.0, None)]),
        claim("c2", at(-30), [(1, "97110", 80.0)]),
        response("r2", "c2", at(-19), [(1, 80.0, 64.0, None)]),
        claim("c3", at(-30), [(1, "92507", 120.0)], payer="Organization/payer-b"),
        response("r3", "c3", at(-40), [(1, 120.0, 0.0, "50")], payer="Organization/payer-b"),
        organization("payer-a", "Acme Health Plan"),
    ]


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    load(engine, *scenario())
    return engine


@pytest.fixture
def report_data(loaded: Engine) -> dict[str, Any]:
    return data.collect(loaded, data.parse_period("12w", TODAY.date()))


# ---------------------------------------------------------------- period


def test_period_parsing_covers_whole_weeks_and_months() -> None:
    sunday = date(2026, 11, 1)
    weeks = data.parse_period("12w", sunday)
    assert (weeks.start, weeks.end, weeks.label) == (date(2026, 8, 10), sunday, "12 weeks")
    assert len(weeks.weeks()) == 12
    assert weeks.weeks()[-1] == "2026-10-26"
    assert data.parse_period("90d", sunday).start == date(2026, 8, 4)
    assert data.parse_period("6m", sunday).start == date(2026, 6, 1)
    year = data.parse_period("1y", date(2026, 1, 15))
    assert year.start == date(2025, 2, 1)
    assert year.months()[0] == "2025-02-01"
    assert year.months()[-1] == "2026-01-01"
    assert len(year.months()) == 12
    for bad in ("12", "w", "0w", "12q", "-3w"):
        with pytest.raises(ConfigError, match="--period"):
            data.parse_period(bad, sunday)


# ---------------------------------------------------------------- numbers from the views


def test_referral_numbers(report_data: dict[str, Any]) -> None:
    weekly = report_data["referrals_weekly"]
    assert weekly["referrals"] == 3
    assert weekly["disciplines"] == ["OT", "PT"]
    assert sorted((r["week"], r["discipline"], r["referrals"]) for r in weekly["by_discipline"]) == sorted(
        [(monday(-10), "OT", 1), (monday(-10), "PT", 1), (monday(-3), "PT", 1)]
    )
    by_week = {t["week"]: t for t in weekly["totals"]}
    assert len(by_week) == 12
    assert (by_week[monday(-10)]["referrals"], by_week[monday(-10)]["intake_complete"]) == (2, 1)
    assert (by_week[monday(-10)]["evaluations_scheduled"], by_week[monday(-10)]["evaluations_attended"]) == (
        2,
        1,
    )
    assert {(r["week"], r["source"], r["referrals"]) for r in weekly["by_source"]} == {
        (monday(-10), "Dr. Ada", 2),
        (monday(-3), "Dr. Bo", 1),
    }

    totals = report_data["funnel"]["totals"]
    assert totals == {"received": 3, "acknowledged": 0, "evaluation_scheduled": 2, "evaluation_attended": 1}
    assert [s["share_of_received"] for s in report_data["funnel"]["steps"]] == pytest.approx(
        [1.0, 0.0, 2 / 3, 1 / 3]
    )
    # sr1: booked 2 days after it was received, attended 3 days after booking, 5 after receipt.
    sr1_month = at(-10)[:7] + "-01"
    month = next(m for m in report_data["funnel"]["months"] if m["month"] == sr1_month)
    assert month["median_days_scheduled_to_attended"] == pytest.approx(3.0)
    assert month["median_days_received_to_attended"] == pytest.approx(5.0)

    sources = {s["source"]: s for s in report_data["sources"]}
    ada = sources["Dr. Ada"]
    assert (ada["last_90_days"], ada["prior_90_days"], ada["trend"], ada["attended"]) == (2, 0, 2, 1)
    assert (ada["conversion_rate"], ada["incomplete_intakes"], ada["incomplete_share"]) == (0.5, 1, 0.5)
    assert report_data["sources"][0]["source"] == "Dr. Ada"  # most referrals first
    assert sources["Dr. Bo"]["last_90_days"] == 1


def test_payer_numbers(report_data: dict[str, Any]) -> None:
    elig = report_data["eligibility"]
    assert (elig["patients"], elig["verified"], elig["rate"]) == (2, 1, 0.5)

    auth = report_data["prior_auth"]
    (payer,) = auth["by_payer"]
    assert payer["payer"] == "unknown (Organization/…)"  # no name known: the bucket, never the reference
    assert (payer["requested"], payer["decided"], payer["approved"], payer["pending"]) == (3, 2, 2, 1)
    assert payer["median_days"] == pytest.approx(7.0)
    assert payer["p90_days"] == pytest.approx(10.0)
    assert auth["median_days"] == pytest.approx(7.0)
    assert auth["pending_now"] == 1


def test_denial_numbers(report_data: dict[str, Any]) -> None:
    denials = report_data["denials"]
    by_payer = {p["payer"]: p for p in denials["by_payer"]}
    # Payer A's name comes from its Organization; payer B has none and is counted in the unknown bucket.
    acme = by_payer["Acme Health Plan"]
    assert (acme["adjudicated_lines"], acme["denied_lines"]) == (3, 1)
    assert acme["denial_rate"] == pytest.approx(1 / 3)
    assert by_payer["unknown (Organization/…)"]["denial_rate"] == pytest.approx(1.0)
    assert (denials["adjudicated_lines"], denials["denied_lines"], denials["denial_rate"]) == (4, 2, 0.5)
    assert {(c["category"], c["denied_lines"]) for c in denials["by_category"]} == {
        ("authorization", 1),
        ("medical_necessity", 1),
    }
    assert {c["category"]: c["share_of_adjudicated"] for c in denials["by_category"]} == {
        "authorization": 0.25,
        "medical_necessity": 0.25,
    }
    clean = {p["payer"]: p for p in denials["clean_claims"]}
    assert (clean["Acme Health Plan"]["adjudicated_claims"], clean["Acme Health Plan"]["clean_claims"]) == (
        2,
        1,
    )

    queue = report_data["queue"]
    assert (queue["size"], queue["open"], queue["appealed"]) == (2, 2, 0)
    assert (queue["oldest_days"], queue["median_age_days"]) == (40, 30.0)
    assert {b["bucket"]: b["lines"] for b in queue["buckets"]} == {
        "0-30 days": 1,
        "31-60 days": 1,
        "61-90 days": 0,
        "91-180 days": 0,
        "over 180 days": 0,
    }


def test_kpis_weeks_and_funnel_count_the_same_referrals(engine: Engine) -> None:
    # 4 weeks ending Sunday 2026-03-29 are Monday 03-02 to 03-29, inside March. Referrals on 03-01 (the
    # Sunday before) and 03-31 are in March but not in the period: only sr-in counts, everywhere.
    load(
        engine,
        service_request("sr-before", "2026-03-01T12:00:00Z", "Dr. Ada", "97161", complete=True),
        service_request("sr-in", "2026-03-02T00:00:00Z", "Dr. Ada", "97161", complete=True),
        service_request("sr-last", "2026-03-29T23:59:59Z", "Dr. Bo", "97165", complete=False),
        service_request("sr-after", "2026-03-31T08:00:00Z", "Dr. Bo", "97161", complete=True),
    )
    got = data.collect(engine, data.parse_period("4w", date(2026, 3, 29)))
    assert got["referrals_weekly"]["referrals"] == 2
    assert sum(t["referrals"] for t in got["referrals_weekly"]["totals"]) == 2
    assert got["funnel"]["totals"]["received"] == 2
    assert [(m["month"], m["received"]) for m in got["funnel"]["months"]] == [("2026-03-01", 2)]
    html = _text(render_html(got))
    assert "2 new referrals" in html
    assert "received from 2026-03-02 to 2026-03-29" in html


def test_endpoint_filter_leaves_other_endpoints_out(loaded: Engine) -> None:
    other = data.collect(loaded, data.parse_period("12w", TODAY.date()), endpoints=["elsewhere"])
    assert other["referrals_weekly"]["referrals"] == 0
    assert other["denials"]["by_payer"] == []
    assert other["queue"]["size"] == 0
    mine = data.collect(loaded, data.parse_period("12w", TODAY.date()), endpoints=[ENDPOINT])
    assert mine["referrals_weekly"]["referrals"] == 3


def test_period_leaves_older_data_out(loaded: Engine) -> None:
    # A period that ended before any of the data: nothing in it, but the queue is "now" and stays.
    old = data.collect(loaded, data.parse_period("4w", (TODAY - timedelta(days=120)).date()))
    assert old["referrals_weekly"]["referrals"] == 0
    assert old["funnel"]["months"] == []
    assert old["prior_auth"]["by_payer"] == []
    assert old["denials"]["adjudicated_lines"] == 0
    assert old["queue"]["size"] == 2
    assert charts.build(old).keys() == {"queue-age", "source-trend"}


# ---------------------------------------------------------------- the page


def _text(html: str) -> str:
    """The page's visible text, roughly: tags dropped, whitespace collapsed."""
    body = html.split("<body>", 1)[1].split("<script>", 1)[0]
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


def _specs(html: str) -> dict[str, Any]:
    match = re.search(r'<script type="application/json" id="report-specs">(.*?)</script>', html, re.S)
    assert match
    return json.loads(match.group(1))


def test_page_shows_the_numbers_and_no_patient_identifiers(report_data: dict[str, Any]) -> None:
    html = render_html(report_data)
    text = _text(html)
    for expected in (
        "3 new referrals",
        "33% of referrals received attended an evaluation",
        "50% eligibility verified before the first visit",
        "7.0 median days to a prior-auth decision",
        "50.0% of adjudicated claim lines denied or reduced",
        "2 denied lines waiting in the queue",
        "Acme Health Plan 3 1 33.3%",
        # Amounts: two decimals after the claims' currency.
        "unknown (Organization/…) 1 1 100.0% USD 120.00",
        "authorization 1 25.0%",
        "Dr. Ada",
        "unknown (Organization/…) 3 2 2 0 1 7.0 10.0",
    ):
        assert expected in text, expected
    # Aggregates only: no patient reference, referral, claim or response id anywhere in the page.
    ours = html.replace(vega_bundle(), "")
    for identifier in ("Patient/", "sr1", "sr2", "pa-1", "par-1", "Claim/c1", "elig-1", "a1"):
        assert identifier not in ours, identifier
    specs = _specs(html)
    assert "Patient/" not in json.dumps(specs)
    assert set(specs) == {
        "referrals-by-discipline",
        "referrals-by-source",
        "referral-funnel",
        "source-trend",
        "eligibility-rate",
        "authorization-turnaround",
        "denial-rate-by-payer",
        "denials-by-category",
        "queue-age",
    }
    for chart_id, spec in specs.items():
        assert f'id="chart-{chart_id}"' in html
        # Every chart carries its numbers as tooltips.
        layers = spec.get("layer", [spec])
        assert any(layer["encoding"].get("tooltip") for layer in layers), chart_id
    funnel = {v["step"]: v["referrals"] for v in specs["referral-funnel"]["data"]["values"]}
    assert funnel == {"Received": 3, "Acknowledged": 0, "Evaluation scheduled": 2, "Evaluation attended": 1}


def test_page_is_self_contained_and_escapes_names() -> None:
    sample = _sample_data(source="</script><script>alert(1)</script>")
    html = render_html(sample)
    # No external resources: nothing to fetch when the file is opened offline.
    assert not re.search(r'<(script|link|img)[^>]+(src|href)="(https?:)?//', html)
    assert "<script>alert(1)</script>" not in html
    assert _specs(html)["referrals-by-source"]["data"]["values"][0]["source"].startswith("</script>")


def test_chart_specs_compile_with_vega_lite(report_data: dict[str, Any]) -> None:
    """Each spec is valid Vega-Lite: the library the page embeds compiles it (vl-convert runs the same)."""
    import vl_convert

    for chart_id, spec in charts.build(report_data).items():
        svg = vl_convert.vegalite_to_svg(spec)
        assert svg.startswith("<svg"), chart_id
        assert 'class="mark-' in svg, chart_id  # marks were drawn, not only axes


def test_count_axes_hold_the_tallest_bar() -> None:
    # Week 1: three disciplines stacked to 9 (the biggest single value is only 5); week 2: 2.
    weekly = {
        "weeks": ["2026-03-02", "2026-03-09"],
        "totals": [{"week": "2026-03-02", "referrals": 9}, {"week": "2026-03-09", "referrals": 2}],
        "disciplines": ["OT", "PT", "SLP"],
        "by_discipline": [
            {"week": "2026-03-02", "discipline": "PT", "referrals": 5},
            {"week": "2026-03-02", "discipline": "OT", "referrals": 3},
            {"week": "2026-03-02", "discipline": "SLP", "referrals": 1},
            {"week": "2026-03-09", "discipline": "PT", "referrals": 2},
        ],
    }
    y = charts.referrals_by_discipline(weekly)["encoding"]["y"]
    assert y["scale"]["domain"][0] == 0
    assert y["scale"]["domain"][1] >= 9
    assert y["axis"]["format"] == "d"  # counts are whole numbers
    steps = [{"step": "Received", "order": 0, "referrals": 40, "share_of_received": 1.0}]
    funnel_x = charts.funnel(steps)["layer"][0]["encoding"]["x"]
    assert funnel_x["scale"]["domain"][1] > 40  # room for the label after the bar


def _sample_data(*, source: str) -> dict[str, Any]:
    period = data.parse_period("1w", date(2026, 11, 1))
    week = period.weeks()[0]
    return {
        "period": {"start": period.start.isoformat(), "end": period.end.isoformat(), "label": period.label},
        "generated_at": "2026-11-01 00:00 UTC",
        "endpoints": ["e"],
        "currency": None,
        "referrals_weekly": {
            "weeks": [week],
            "totals": [
                {
                    "week": week,
                    "referrals": 1,
                    "intake_complete": 1,
                    "acknowledged": 0,
                    "evaluations_scheduled": 0,
                    "evaluations_attended": 0,
                }
            ],
            "disciplines": ["PT"],
            "by_discipline": [{"week": week, "discipline": "PT", "referrals": 1}],
            "sources": [source],
            "by_source": [{"week": week, "source": source, "referrals": 1}],
            "referrals": 1,
        },
        "funnel": {
            "months": [],
            "totals": dict.fromkeys(
                ("received", "acknowledged", "evaluation_scheduled", "evaluation_attended"), 0
            ),
            "steps": [],
        },
        "loop": {"referrals": 0, "sources": []},
        "sources": [],
        "eligibility": {"months": [], "patients": 0, "verified": 0, "rate": None},
        "prior_auth": {
            "by_payer": [],
            "monthly": [],
            "requested": 0,
            "median_days": None,
            "pending_now": 0,
            "expiring_next_14_days": 0,
        },
        "denials": {
            "by_payer": [],
            "by_category": [],
            "clean_claims": [],
            "adjudicated_lines": 0,
            "denied_lines": 0,
            "denial_rate": None,
            "clean_claim_rate": None,
        },
        "queue": {
            "size": 0,
            "open": 0,
            "appealed": 0,
            "amount": 0.0,
            "median_age_days": None,
            "oldest_days": None,
            "buckets": [],
            "by_category": [],
        },
        "payer_mix": [],
    }


# ---------------------------------------------------------------- the command


def test_report_command_end_to_end(loaded: Engine, tmp_path: Path) -> None:
    config = tmp_path / "connector.toml"
    url = loaded.url.render_as_string(hide_password=False)
    config.write_text(
        f'[warehouse]\nurl = "{url}"\n\n[[endpoints]]\nname = "{ENDPOINT}"\nndjson_dir = "{tmp_path}"\n'
    )
    out = tmp_path / "out" / "practice.html"
    result = CliRunner().invoke(
        app, ["report", "--config", str(config), "--period", "8w", "--endpoint", ENDPOINT, "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert str(out) in result.output.replace("\n", "")
    html = out.read_text()
    assert "8 weeks" in html
    assert "3 new referrals" in _text(html)

    bad = CliRunner().invoke(app, ["report", "--config", str(config), "--period", "soon", "--out", str(out)])
    assert bad.exit_code == 1
    assert "--period" in bad.output
    unknown = CliRunner().invoke(app, ["report", "--config", str(config), "-e", "nope", "--out", str(out)])
    assert unknown.exit_code == 1
    assert "nope" in unknown.output


def test_write_report_pdf_without_chromium_says_so(
    loaded: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.report import pdf

    monkeypatch.setattr(pdf, "find_chromium", lambda: None)
    with pytest.raises(pdf.BrowserError, match="chromium"):
        write_report(loaded, tmp_path / "r.html", pdf=True)
    # The HTML was written before the PDF step failed: the page still stands.
    assert (tmp_path / "r.html").stat().st_size > 100_000


def test_one_number_format_in_the_demo_tables() -> None:
    """SQLite sums a NUMERIC column of whole amounts to an int, PostgreSQL to a Decimal: both print alike."""
    from decimal import Decimal

    from connector.warehouse.summary import _cell

    assert _cell(660, "money", "USD") == _cell(Decimal("660.00"), "money", "USD") == "USD 660.00"
    assert _cell(53.1, "money", None) == "53.10"
    assert _cell(Decimal("5"), "count", None) == _cell(5, "count", None) == "5"
    assert _cell(Decimal("0.4400"), "rate", None) == _cell(0.44, "rate", None) == "0.44"
    assert _cell("Organization/payer-9", "text", None) == "unknown (Organization/…)"
    assert _cell(date(2026, 3, 2), "text", None) == "2026-03-02"
