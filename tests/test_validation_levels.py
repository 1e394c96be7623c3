"""`validation = "strict" | "mapped"` per endpoint: what each level refuses, from config to dead letter."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from connector.config import load_settings
from connector.errors import ConfigError
from connector.sync.pipeline import map_resources
from connector.warehouse.writer import PageWrite, write_page
from mappings.types import MappingOptions

SYNCED_AT = datetime(2026, 11, 29, 9, 0, tzinfo=UTC)

REFERRAL: dict[str, Any] = {
    "resourceType": "ServiceRequest",
    "id": "sr-1",
    "meta": {"versionId": "1", "lastUpdated": "2026-11-01T10:00:00.000Z"},
    "status": "active",
    "intent": "order",
    "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "97161"}]},
    "subject": {"reference": "Patient/p1"},
    "requester": {"reference": "Practitioner/dr1"},
    "authoredOn": "2026-10-30",
    "identifier": [{"system": "urn:oid:1.2.3", "value": "R-1"}],
}


def config(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(
        f'[[endpoints]]\nname = "emr"\nbase_url = "https://emr.test/fhir"\n{line}\n', encoding="utf-8"
    )
    return path


def test_strict_is_the_default_and_mapped_can_be_chosen(tmp_path: Path) -> None:
    assert load_settings(config(tmp_path, "")).endpoints[0].mapping_options().validation == "strict"
    chosen = load_settings(config(tmp_path, 'validation = "mapped"')).endpoints[0]
    assert chosen.mapping_options().validation == "mapped"


def test_an_unknown_level_is_a_config_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="validation"):
        load_settings(config(tmp_path, 'validation = "lenient"'))


def outcome(resource: dict[str, Any], level: str) -> tuple[int, list[str]]:
    page = map_resources(
        "emr", "ServiceRequest", [resource], SYNCED_AT, options=MappingOptions(validation=level)
    )
    return len(page.mapped.get("referral", [])), [reject.error for reject in page.rejects]


@pytest.mark.parametrize("level", ["strict", "mapped"])
def test_both_levels_load_a_valid_referral(level: str) -> None:
    assert outcome(REFERRAL, level) == (1, [])


def test_an_unread_element_gone_bad_is_refused_only_by_strict() -> None:
    resource = copy.deepcopy(REFERRAL)
    resource["identifier"] = [{"value": 42}]  # Identifier.value must be a string; no mapper reads it
    loaded, errors = outcome(resource, "strict")
    assert loaded == 0
    assert "identifier[0].value" in errors[0]
    assert outcome(resource, "mapped") == (1, [])


@pytest.mark.parametrize(
    ("element", "value", "where"),
    [
        ("authoredOn", "2026-13-45", "authoredOn"),
        ("subject", "Patient/p1", "subject"),
        ("status", "bogus", "status"),
        ("meta", {"lastUpdated": "yesterday"}, "meta"),
    ],
)
def test_a_read_element_gone_bad_is_a_dead_letter_at_both_levels(
    element: str, value: Any, where: str
) -> None:
    resource = copy.deepcopy(REFERRAL)
    resource[element] = value
    for level in ("strict", "mapped"):
        loaded, errors = outcome(resource, level)
        assert loaded == 0, level
        assert len(errors) == 1
        assert where in errors[0]
        bad = value if isinstance(value, str) else value["lastUpdated"]
        assert bad not in errors[0]  # the location, never the value


@pytest.mark.parametrize("level", ["strict", "mapped"])
def test_a_resource_json_cannot_store_is_a_dead_letter_not_a_crash(level: str) -> None:
    resource = {
        "resourceType": "CoverageEligibilityRequest",  # no mapper: validated, then stored raw
        "id": "big",
        "status": "active",
        "purpose": ["validation"],
        "patient": {"reference": "Patient/p1"},
        "created": "2026-11-01",
        "insurer": {"reference": "Organization/o1"},
        "item": [{"unitPrice": {"value": 10**30, "currency": "USD"}}],
    }
    page = map_resources(
        "emr", "CoverageEligibilityRequest", [resource], SYNCED_AT, options=MappingOptions(validation=level)
    )
    assert page.raw == []
    assert len(page.rejects) == 1
    assert page.rejects[0].payload == {"id": "big", "note": "not kept: not storable as JSON"}


@pytest.mark.parametrize("level", ["strict", "mapped"])
def test_a_mapper_tripping_on_an_odd_shape_is_a_dead_letter(
    level: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(resource: dict[str, Any], ctx: Any) -> Any:
        return resource["code"].get("coding")  # as if `code` came as a JSON string

    monkeypatch.setattr(
        "connector.sync.pipeline.map_resource", lambda r, ctx: broken({**r, "code": "{}"}, ctx)
    )
    page = map_resources(
        "emr", "ServiceRequest", [REFERRAL], SYNCED_AT, options=MappingOptions(validation=level)
    )
    assert page.raw == []
    assert page.rejects[0].error == "ServiceRequest/sr-1: cannot map: AttributeError"


@pytest.mark.parametrize("level", ["strict", "mapped"])
def test_a_string_holding_nul_is_a_dead_letter_that_any_database_stores(level: str, engine: Any) -> None:
    """Valid JSON and FHIR, but PostgreSQL refuses NUL in jsonb and text: without this the page failed on
    PostgreSQL on every retry and held the stream back."""
    nul = copy.deepcopy(REFERRAL) | {"id": "nul", "note": [{"text": "before\u0000after"}]}
    # Text that merely shows a backslash-u0000 (an escaped backslash in JSON) is fine.
    shown = copy.deepcopy(REFERRAL) | {"id": "shown", "note": [{"text": "C:\\u0000 \\\\u0000"}]}
    page = map_resources(
        "emr", "ServiceRequest", [nul, shown], SYNCED_AT, options=MappingOptions(validation=level)
    )
    assert [row["resource_id"] for row in page.raw] == ["shown"]
    assert [(r.resource_id, r.payload) for r in page.rejects] == [
        ("nul", {"id": "nul", "note": "not kept: a string holds NUL (PostgreSQL refuses it)"})
    ]
    assert "holds NUL" in page.rejects[0].error
    assert "before" not in page.rejects[0].error
    written = write_page(
        engine,
        PageWrite(
            endpoint="emr",
            resource_type="ServiceRequest",
            raw=page.raw,
            mapped=page.mapped,
            rejects=page.rejects,
        ),
    )
    assert (written.loaded, written.rejected) == (1, 1)
