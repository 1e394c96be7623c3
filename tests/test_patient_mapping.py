"""Patient -> patient: demographics without names, addresses or full birth dates; real and hand-made data."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from typer.testing import CliRunner

from connector.cli import app
from connector.config import EndpointSettings
from connector.errors import MappingError
from connector.sync.pipeline import map_resources
from connector.warehouse.writer import PageWrite, write_page
from mappings.patient import map_patient
from mappings.registry import map_resource
from mappings.types import MapContext

DATA = Path(__file__).parent / "data" / "fhir" / "Patient.ndjson"
SYNCED = datetime(2026, 12, 7, 6, 0, tzinfo=UTC)
CTX = MapContext(endpoint="clinic", synced_at=SYNCED)
#: What may identify a patient: none of it may reach a row.
IDENTIFYING = ("name", "address", "telecom", "identifier", "photo", "contact")


def corpus() -> list[dict[str, Any]]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def patient(**elements: Any) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "p1",
        "meta": {"lastUpdated": "2026-12-01T10:00:00Z"},
        "name": [{"family": "Doe", "given": ["Jane"]}],
        "address": [{"line": ["1 Main St"], "city": "Springfield", "postalCode": "01101"}],
        "telecom": [{"system": "phone", "value": "555-0100"}],
        **elements,
    }


def row_of(resource: dict[str, Any]) -> dict[str, Any]:
    (row,) = map_resource(resource, CTX)["patient"]
    return row


def test_demographics_without_what_identifies_the_patient() -> None:
    resource = patient(
        gender="female",
        birthDate="1980-07-04",
        active=True,
        communication=[
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "en"}]}},
            {"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "es"}]}, "preferred": True},
        ],
        managingOrganization={"reference": "Organization/clinic-1"},
    )
    row = row_of(resource)
    assert row["gender"] == "female"
    assert row["birth_year"] == 1980
    assert row["age_90_or_over"] is False
    assert row["language"] == "es"  # the preferred one, not the first
    assert row["managing_organization_ref"] == "Organization/clinic-1"
    assert row["active"] is True
    assert row["deceased"] is None
    text = json.dumps(row, default=str)
    for value in ("Doe", "Jane", "Main St", "Springfield", "01101", "555-0100", "07-04"):
        assert value not in text


@pytest.mark.parametrize(
    ("birth_date", "year", "over"),
    [
        # At the sync (2026-12-07): born 1936-12-07 is 90 today; born 1936-12-08 is still 89.
        ("1936-12-07", None, True),
        ("1936-12-08", 1936, False),
        ("1920", None, True),
        ("2019-03", 2019, False),
        (None, None, None),
    ],
)
def test_birth_years_of_the_very_old_are_not_kept(
    birth_date: str | None, year: int | None, over: Any
) -> None:
    resource = patient() if birth_date is None else patient(birthDate=birth_date)
    row = row_of(resource)
    assert row["birth_year"] == year
    assert row["age_90_or_over"] is over


def test_deceased_either_way() -> None:
    assert row_of(patient(deceasedDateTime="2025-01-02"))["deceased"] is True
    assert row_of(patient(deceasedBoolean=False))["deceased"] is False
    assert row_of(patient())["deceased"] is None


def test_first_language_when_none_is_preferred_and_none_without_a_code() -> None:
    first = [{"language": {"coding": [{"code": "vi"}]}}, {"language": {"coding": [{"code": "fr"}]}}]
    assert row_of(patient(communication=first))["language"] == "vi"
    assert row_of(patient(communication=[{"language": {"text": "Spanish"}}]))["language"] is None


def test_an_unknown_gender_code_is_refused() -> None:
    with pytest.raises(MappingError, match="gender"):
        map_resource(patient(gender="F"), CTX)


def test_not_a_patient() -> None:
    with pytest.raises(MappingError, match="expected a Patient"):
        map_patient({"resourceType": "Person", "id": "x"}, CTX)


def test_every_corpus_patient_is_a_row_or_a_reason() -> None:
    resources = corpus()
    page = map_resources("clinic", "Patient", resources, SYNCED)
    rows = page.mapped.get("patient", [])
    assert len(rows) + len(page.rejects) == len(resources) == 123
    # The 9 Synthea patients lifted out of transaction bundles have no id (only a urn:uuid fullUrl).
    assert len(page.rejects) == sum(1 for r in resources if "id" not in r) == 9
    assert all("missing id" in reject.error for reject in page.rejects)
    # Every corpus patient with a birth date under 90 keeps its year; the corpus has real values to map.
    assert {r["gender"] for r in rows} >= {"male", "female"}
    assert any(r["birth_year"] for r in rows)
    assert all(set(r).isdisjoint(IDENTIFYING) for r in rows)


def test_patient_is_not_synced_unless_listed() -> None:
    assert "Patient" not in EndpointSettings(name="e", base_url="https://emr.test/fhir").resources
    listed = EndpointSettings(name="e", base_url="https://emr.test/fhir", resources=["Patient"])
    assert listed.resources == ["Patient"]
    with pytest.raises(ValueError, match="unsupported resource type Patients"):
        EndpointSettings(name="e", base_url="https://emr.test/fhir", resources=["Patients"])


def test_rows_round_trip_through_the_warehouse(engine: Engine) -> None:
    resources = corpus()
    page = map_resources("clinic", "Patient", resources, SYNCED)
    write_page(
        engine, PageWrite(endpoint="clinic", resource_type="Patient", raw=page.raw, mapped=page.mapped)
    )
    with engine.connect() as conn:
        count = conn.execute(sa.text("select count(*) from patient")).scalar_one()
        columns = set(conn.execute(sa.text("select * from patient")).keys())
        child = conn.execute(
            sa.text("select gender, birth_year from patient where resource_id = 'child-example'")
        ).one()
        deceased = conn.execute(
            sa.text(
                "select deceased, birth_year, age_90_or_over from patient"
                " where resource_id = 'deceased-example'"
            )
        ).one()
    # Ids repeat across the corpus' sources ("1" three times, "example" twice): one row per key.
    assert count == len({r["resource_id"] for r in page.mapped["patient"]}) == 111
    assert columns.isdisjoint(IDENTIFYING)
    # US Core child-example: born 2016-01-15, sex only as an extension (no administrative gender).
    assert tuple(child) == (None, 2016)
    # deceased-example: born 1937-10-21 (89 at the sync), deceasedDateTime 2022.
    assert tuple(deceased) == (True, 1937, False)


def test_sync_of_a_folder_with_patients(tmp_path: Path) -> None:
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Patient.ndjson").write_text(DATA.read_text(encoding="utf-8"), encoding="utf-8")
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "export"\nndjson_dir = "{folder}"\nresources = ["Patient"]\n'
    )
    result = CliRunner().invoke(app, ["sync", "--config", str(config), "--json"])
    assert result.exit_code == 0, result.output
    (stream,) = json.loads(result.stdout)["streams"]
    assert stream["resource_type"] == "Patient"
    assert stream["fetched"] == 123
    assert stream["rejected"] == 9  # no id
    # A resource id given twice in one folder is one row: the later copy replaces the earlier.
    ids = [r["id"] for r in corpus() if "id" in r]
    assert stream["loaded"] == len(set(ids)) == 111
