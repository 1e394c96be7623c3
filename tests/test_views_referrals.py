"""The referral views on a small fixed data set with hand-computed numbers, on SQLite and PostgreSQL.

The data goes the whole way: FHIR resources -> `map_resource` -> `write_page` -> views.
"""

from __future__ import annotations

import gzip
import importlib
import json
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse import sqlviews
from connector.warehouse.models import Base, UTCDateTime
from connector.warehouse.writer import PageWrite, write_page
from mappings.registry import map_resource
from mappings.types import MapContext

CPT = "http://www.ama-assn.org/go/cpt"
SNOMED = "http://snomed.info/sct"
ICD10CM = "http://hl7.org/fhir/sid/icd-10-cm"
ORG_TYPE = "http://terminology.hl7.org/CodeSystem/organization-type"
SYNCED = datetime(2026, 11, 1, tzinfo=UTC)

WEEKLY_COLUMNS = [
    "endpoint",
    "week",
    "source_ref",
    "source",
    "source_type",
    "discipline",
    "referrals",
    "intake_complete",
    "acknowledged",
    "evaluations_scheduled",
    "evaluations_attended",
]
FUNNEL_COLUMNS = [
    "endpoint",
    "month",
    "received",
    "acknowledged",
    "evaluation_scheduled",
    "evaluation_attended",
    "median_days_received_to_acknowledged",
    "median_days_acknowledged_to_scheduled",
    "median_days_received_to_scheduled",
    "median_days_scheduled_to_attended",
    "median_days_received_to_attended",
]
SOURCES_COLUMNS = [
    "endpoint",
    "source_ref",
    "source",
    "source_type",
    "referrals_last_90_days",
    "referrals_prior_90_days",
    "trend",
    "trend_pct",
    "evaluations_attended_last_90_days",
    "conversion_rate",
    "incomplete_intakes_last_90_days",
    "incomplete_intake_share",
]


# -- FHIR builders -----------------------------------------------------------------------------------


def referral(
    rid: str,
    authored: str,
    *,
    requester: dict[str, Any] | None,
    code: tuple[str, str] = (CPT, "97161"),
    complete: bool = True,
    status: str = "active",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "ServiceRequest",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": "2026-10-01T00:00:00Z"},
        "status": status,
        "intent": "order",
        "code": {"coding": [{"system": code[0], "code": code[1]}]},
        "subject": {"reference": f"Patient/{rid}-pt"},
        "authoredOn": authored,
        "reasonCode": [{"coding": [{"system": ICD10CM, "code": "M54.50"}]}],
        "occurrenceDateTime": authored[:10],
    }
    if requester is not None:
        resource["requester"] = requester
    if complete:
        resource["insurance"] = [{"reference": f"Coverage/{rid}"}]
    return resource


def appointment(
    aid: str, sr: str | None, status: str, *, code: str = "97161", created: str, start: str
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": aid,
        "status": status,
        "serviceType": [{"coding": [{"system": CPT, "code": code}]}],
        "created": created,
        "start": start,
        "end": start,
        "participant": [{"actor": {"reference": "Patient/x"}, "status": "accepted"}],
    }
    if sr is not None:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{sr}"}]
    return resource


def encounter(
    eid: str, *, sr: str | None, appointment_id: str | None, code: str | None, start: str
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Encounter",
        "id": eid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": "Patient/x"},
        "period": {"start": start},
    }
    if code is not None:
        resource["type"] = [{"coding": [{"system": CPT, "code": code}]}]
    if sr is not None:
        resource["basedOn"] = [{"reference": f"ServiceRequest/{sr}"}]
    if appointment_id is not None:
        resource["appointment"] = [{"reference": f"Appointment/{appointment_id}"}]
    return resource


def load(engine: Engine, endpoint: str, resources: list[dict[str, Any]]) -> None:
    ctx = MapContext(endpoint=endpoint, synced_at=SYNCED)
    mapped: dict[str, list[dict[str, Any]]] = {}
    for resource in resources:
        for table, rows in map_resource(resource, ctx).items():
            mapped.setdefault(table, []).extend(rows)
    write_page(engine, PageWrite(endpoint=endpoint, resource_type="ServiceRequest", mapped=mapped))


def rows(engine: Engine, sql: str) -> tuple[list[str], list[tuple[Any, ...]]]:
    with engine.connect() as conn:
        result = conn.execute(sa.text(sql))
        return list(result.keys()), [tuple(r) for r in result]


def as_date(value: Any) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def num(value: Any) -> float | None:
    return None if value is None else float(value) if isinstance(value, Decimal | float | int) else value


DOC = {"reference": "Practitioner/doc1", "display": "Dr. Display Only"}
ORG = {"reference": "Organization/org1"}
SOURCES = [
    {
        "resourceType": "Practitioner",
        "id": "doc1",
        "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
        "name": [{"family": "Doc", "given": ["Ann"], "prefix": ["Dr."]}],
    },
    {
        "resourceType": "Organization",
        "id": "org1",
        "name": "Kids Clinic",
        "type": [{"coding": [{"system": ORG_TYPE, "code": "prov"}]}],
    },
]


@pytest.fixture
def cohort(engine: Engine) -> Engine:
    """March-April 2026 referrals of endpoint "clinic" and what followed them.

    | referral | received (UTC)  | source             | disc. | intake     | evaluation                   |
    | sr1      | Mon 03-02       | Practitioner/doc1  | PT    | complete   | booked 03-03, attended 03-10 |
    | sr2      | Thu 03-05 04:30 | Practitioner/doc1  | PT    | incomplete | booked 03-09, no-show        |
    | sr3      | Sun 03-08       | Organization/org1  | SLP   | complete   | booked 03-15 (future)        |
    | sr4      | Mon 03-09       | none -> unknown    | OT    | incomplete | cancelled                    |
    | sr5      | Wed 04-01       | Patient -> self    | other | complete   | booked 04-02, Encounter 04-08|
    | sr6      | 03-03           | (entered-in-error: left out)                                    |
    | sr7      | Tue 03-03       | Practitioner/ghost | PT    | incomplete | none                         |
    """
    resources = [
        *SOURCES,
        referral("sr1", "2026-03-02T10:00:00Z", requester=DOC),
        # 23:30 in New York on the 4th is the 5th in UTC: weeks and days are UTC.
        referral("sr2", "2026-03-04T23:30:00-05:00", requester=DOC, complete=False),
        referral("sr3", "2026-03-08T12:00:00Z", requester=ORG, code=(SNOMED, "5154007")),
        referral("sr4", "2026-03-09T08:00:00Z", requester=None, code=(CPT, "97166")),
        referral(
            "sr5",
            "2026-04-01T00:00:00Z",
            requester={"reference": "Patient/sr5-pt", "display": "Secret Name"},
            code=("http://loinc.org", "24627-2"),
        ),
        referral("sr6", "2026-03-03T09:00:00Z", requester=DOC, status="entered-in-error"),
        referral(
            "sr7",
            "2026-03-03T09:00:00Z",
            requester={"reference": "Practitioner/ghost", "display": "Dr. Ghost"},
            complete=False,
        ),
        appointment("a1", "sr1", "fulfilled", created="2026-03-03", start="2026-03-10T15:00:00Z"),
        # The Encounter of a1 reaches sr1 through its Appointment only, and must not count twice.
        encounter("e1", sr=None, appointment_id="a1", code="97161", start="2026-03-10T15:00:00Z"),
        appointment("a2", "sr2", "noshow", code="97162", created="2026-03-09", start="2026-03-12T15:00:00Z"),
        appointment("a3", "sr3", "booked", code="92523", created="2026-03-15", start="2026-03-20T15:00:00Z"),
        # A treatment visit, even fulfilled, is no evaluation.
        appointment(
            "a3t", "sr3", "fulfilled", code="92507", created="2026-03-09", start="2026-03-11T15:00:00Z"
        ),
        appointment(
            "a4", "sr4", "cancelled", code="97166", created="2026-03-10", start="2026-03-16T15:00:00Z"
        ),
        appointment("a5", "sr5", "booked", created="2026-04-02", start="2026-04-08T10:00:00Z"),
        # An Encounter without codes is the evaluation its Appointment was booked for.
        encounter("e5", sr="sr5", appointment_id="a5", code=None, start="2026-04-08T10:00:00Z"),
        # sr6 is entered-in-error: its visits count nowhere.
        appointment("a6", "sr6", "fulfilled", created="2026-03-04", start="2026-03-05T10:00:00Z"),
    ]
    load(engine, "clinic", resources)
    # Another endpoint's visit for a referral of the same id must not leak into "clinic".
    load(
        engine,
        "other",
        [
            appointment(
                "a9", "sr4", "fulfilled", code="97166", created="2026-03-10", start="2026-03-11T10:00:00Z"
            )
        ],
    )
    return engine


def test_weekly(cohort: Engine) -> None:
    columns, got = rows(cohort, "SELECT * FROM v_referrals_weekly")
    assert columns == WEEKLY_COLUMNS
    table = sorted(
        ((as_date(r[1]), *r[2:6], *(int(v) for v in r[6:])) for r in got if r[0] == "clinic"),
        key=lambda r: (r[0], r[2]),
    )
    assert table == [
        (date(2026, 3, 2), "Practitioner/doc1", "Dr. Ann Doc", "physician", "PT", 2, 1, 0, 2, 1),
        (date(2026, 3, 2), "Practitioner/ghost", "Dr. Ghost", "other", "PT", 1, 0, 0, 0, 0),
        (date(2026, 3, 2), "Organization/org1", "Kids Clinic", "clinic", "SLP", 1, 1, 0, 1, 0),
        (date(2026, 3, 9), None, "unknown", "unknown", "OT", 1, 0, 0, 0, 0),
        (date(2026, 3, 30), None, "self", "self", "other", 1, 1, 0, 1, 1),
    ]
    assert {r[0] for r in got} == {"clinic"}  # no referrals on "other", so no rows
    flat = repr(got)
    assert "Secret" not in flat
    assert "Display Only" not in flat  # the source row's name wins over the requester display


def test_funnel(cohort: Engine) -> None:
    columns, got = rows(cohort, "SELECT * FROM v_referral_funnel ORDER BY month")
    assert columns == FUNNEL_COLUMNS
    table = [(r[0], as_date(r[1]), *(int(v) for v in r[2:6]), *(num(v) for v in r[6:])) for r in got]
    assert table == [
        # received->scheduled: sr1 1 day, sr2 4 days (03-05 -> 03-09, UTC), sr3 7 days: median 4.
        # scheduled->attended and received->attended: sr1 only, 03-03 -> 03-10 and 03-02 -> 03-10.
        ("clinic", date(2026, 3, 1), 5, 0, 3, 1, None, None, 4.0, 7.0, 8.0),
        # sr5: booked 04-02, attended 04-08 (the Encounter's start).
        ("clinic", date(2026, 4, 1), 1, 0, 1, 1, None, None, 1.0, 6.0, 7.0),
    ]


def test_medians_of_an_even_count_average_the_middle_two(cohort: Engine) -> None:
    load(
        cohort,
        "clinic",
        [
            referral("sr8", "2026-04-10T10:00:00Z", requester=DOC),
            appointment("a8", "sr8", "fulfilled", created="2026-04-13", start="2026-04-20T10:00:00Z"),
        ],
    )
    _, got = rows(
        cohort,
        "SELECT received, median_days_received_to_scheduled, median_days_scheduled_to_attended, "
        "median_days_received_to_attended FROM v_referral_funnel WHERE month >= '2026-04-01'",
    )
    # received->scheduled: 1 and 3 -> 2; scheduled->attended: 6 and 7 -> 6.5; received->attended: 7 and 10.
    assert [(int(r[0]), *(num(v) for v in r[1:])) for r in got] == [(2, 2.0, 6.5, 8.5)]


def test_sources(engine: Engine) -> None:
    now = datetime.now(UTC).replace(microsecond=0)

    def at(days: float) -> str:
        return (now - timedelta(days=days)).isoformat().replace("+00:00", "Z")

    resources = [
        *SOURCES,
        referral("s1", at(10), requester=DOC),
        referral("s2", at(20), requester=DOC, complete=False),
        referral("s3", at(89), requester=DOC),
        referral("s4", at(100), requester=DOC),  # the 90 days before
        referral("s5", at(-5), requester=DOC),  # authored in the future: not counted
        referral("s6", at(95), requester=ORG),
        referral("s7", at(179), requester=ORG),
        referral("s8", at(5), requester=None, complete=False),
        referral("s9", at(200), requester={"reference": "Practitioner/old", "display": "Dr. Old"}),
        appointment("b1", "s1", "fulfilled", created=at(9)[:10], start=at(3)),
        appointment("b4", "s4", "fulfilled", created=at(99)[:10], start=at(95)),  # converted, but prior
    ]
    load(engine, "clinic", resources)
    columns, got = rows(engine, "SELECT * FROM v_referral_sources")
    assert columns == SOURCES_COLUMNS
    table = sorted(
        (
            (
                r[1],
                r[2],
                r[3],
                *(int(v) for v in r[4:7]),
                num(r[7]),
                int(r[8]),
                num(r[9]),
                int(r[10]),
                num(r[11]),
            )
            for r in got
        ),
        key=lambda r: r[1],
    )
    assert table == [
        # 3 in the last 90 days, 1 before: +2 (+200 %); s1 attended; s2 incomplete.
        (
            "Practitioner/doc1",
            "Dr. Ann Doc",
            "physician",
            3,
            1,
            2,
            200.0,
            1,
            pytest.approx(0.3333),
            1,
            pytest.approx(0.3333),
        ),
        # Nothing lately: no rates, -100 %.
        ("Organization/org1", "Kids Clinic", "clinic", 0, 2, -2, -100.0, 0, None, 0, None),
        # No requester: counted under "unknown", never dropped; no prior referrals: no trend_pct.
        (None, "unknown", "unknown", 1, 0, 1, None, 0, 0.0, 1, 1.0),
    ]


def test_referral_rows_without_the_0002_columns_still_count(engine: Engine) -> None:
    # A referral row without the 0002 columns (loaded by an older connector) still counts, as "other".
    table = Base.metadata.tables["referral"]
    with engine.begin() as conn:
        conn.execute(
            table.insert().values(
                endpoint="old",
                resource_type="ServiceRequest",
                resource_id="legacy",
                content_hash="h",
                authored_on=datetime(2026, 3, 2, tzinfo=UTC),
                reason_codes=[],
                coverage_refs=[],
                loaded_at=SYNCED,
            )
        )
    _, got = rows(
        engine, "SELECT source, source_type, discipline, referrals, intake_complete FROM v_referrals_weekly"
    )
    assert [(r[0], r[1], r[2], int(r[3]), int(r[4])) for r in got] == [("unknown", "other", "other", 1, 0)]


def test_acknowledgments_count_in_the_migrated_views(cohort: Engine) -> None:
    """Push-back's migration redefines the views with view_sql(acknowledgments=True)."""
    ack = Base.metadata.tables["acknowledgment"]
    values: dict[str, Any] = {}
    for column in ack.columns:
        if column.nullable or column.default is not None or column.server_default is not None:
            continue
        values[column.name] = SYNCED if isinstance(column.type, UTCDateTime) else column.type.python_type()
    values |= {
        "endpoint": "clinic",
        "referral_id": "sr1",
        "acknowledged_at": datetime(2026, 3, 4, tzinfo=UTC),
    }
    with cohort.begin() as conn:
        conn.execute(ack.insert().values(**values))
    _, got = rows(
        cohort,
        "SELECT acknowledged, median_days_received_to_acknowledged, median_days_acknowledged_to_scheduled "
        "FROM v_referral_funnel ORDER BY month",
    )
    # sr1: received 03-02, acknowledged 03-04 (2 days), booked 03-03 (-1 day: booked before the Task).
    assert [(int(r[0]), num(r[1]), num(r[2])) for r in got] == [(1, 2.0, -1.0), (0, None, None)]
    _, weekly = rows(cohort, "SELECT SUM(acknowledged) FROM v_referrals_weekly")
    assert int(weekly[0][0]) == 1


def test_view_sql_per_dialect_and_without_acknowledgments_by_default() -> None:
    migration = importlib.import_module("connector.warehouse.migrations.versions.0002_referral_facts")
    plain, with_ack = migration.view_sql(), migration.view_sql(acknowledgments=True)
    assert set(plain) == set(with_ack) == set(migration.VIEWS)
    for name in migration.VIEWS:
        for d in ("sqlite", "postgresql"):
            code = "\n".join(line.split("--")[0] for line in plain[name][d].splitlines())
            assert "JOIN acknowledgment" not in code, (name, d)
            assert "LEFT JOIN acknowledgment ack" in with_ack[name][d], (name, d)
    assert sqlviews.week_start("ref.received_at", "sqlite") in plain["v_referrals_weekly"]["sqlite"]
    assert sqlviews.week_start("ref.received_at", "postgresql") in plain["v_referrals_weekly"]["postgresql"]


def test_demo_data_through_the_views(engine: Engine) -> None:
    """The bundled demo: every referral gets a discipline and an intake result, visits reach their referrals
    (regression numbers of the deterministic demo data; the HL7 samples are re-dated into its 16 weeks, so
    every referral is received in July-October 2026)."""
    demo = Path(__file__).resolve().parents[1] / "connector" / "demo" / "data"
    resources: list[dict[str, Any]] = []
    for rtype in ("Practitioner", "Organization", "ServiceRequest", "Appointment", "Encounter"):
        with gzip.open(demo / f"{rtype}.ndjson.gz", "rt", encoding="utf-8") as fh:
            resources.extend(json.loads(line) for line in fh)
    valid = [r for r in resources if not r["id"].startswith("demo-sr-invalid-")]
    load(engine, "demo", valid)
    _, got = rows(
        engine,
        "SELECT COUNT(*), SUM(CASE WHEN discipline IS NULL OR intake_complete IS NULL THEN 1 ELSE 0 END), "
        "SUM(CASE WHEN intake_complete THEN 1 ELSE 0 END) FROM referral",
    )
    assert [tuple(int(v) for v in r) for r in got] == [(220, 0, 120)]
    _, orphans = rows(
        engine,
        "SELECT COUNT(*) FROM visit v WHERE v.referral_ref LIKE 'ServiceRequest/demo-sr-%' AND NOT EXISTS "
        "(SELECT 1 FROM referral r WHERE 'ServiceRequest/' || r.resource_id = v.referral_ref)",
    )
    assert int(orphans[0][0]) == 0
    _, funnel = rows(
        engine,
        "SELECT month, received, evaluation_scheduled, evaluation_attended, "
        "median_days_received_to_scheduled, median_days_received_to_attended FROM v_referral_funnel "
        "ORDER BY month",
    )
    assert sum(int(r[1]) for r in funnel) == 220
    assert [(as_date(r[0]), *(int(v) for v in r[1:4]), *(num(v) for v in r[4:])) for r in funnel] == [
        (date(2026, 7, 1), 48, 25, 23, 1.0, 13.0),
        (date(2026, 8, 1), 63, 32, 27, 1.0, 11.0),
        (date(2026, 9, 1), 62, 33, 32, 1.0, 9.0),
        (date(2026, 10, 1), 47, 26, 13, 1.0, 10.0),
    ]
