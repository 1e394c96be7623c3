"""Pure CapabilityStatement helpers on a small hand-made statement."""

from __future__ import annotations

from typing import Any

from connector.fhir.capabilities import (
    fhir_version,
    is_r4,
    resource_types,
    search_params,
    supports_last_updated,
    supports_search,
    supports_sort,
)

CAP: dict[str, Any] = {
    "resourceType": "CapabilityStatement",
    "fhirVersion": "4.0.1",
    "rest": [
        {
            "mode": "server",
            "resource": [
                {
                    "type": "ServiceRequest",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [
                        {"name": "authored", "type": "date"},
                        {"name": "_lastUpdated", "type": "date"},
                        {"name": "_sort", "type": "string"},
                    ],
                },
                {
                    "type": "Coverage",
                    "interaction": [{"code": "read"}, {"code": "search-type"}],
                    "searchParam": [{"name": "beneficiary", "type": "reference"}],
                },
                {"type": "Claim", "interaction": [{"code": "read"}]},
                {"type": "Encounter"},  # no interactions listed at all
            ],
            # Rest-level parameters apply to every type the server exposes.
            "searchParam": [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}],
        },
        {
            # Client mode: what the server calls elsewhere; must not count as server support.
            "mode": "client",
            "resource": [{"type": "ExplanationOfBenefit", "searchParam": [{"name": "_lastUpdated"}]}],
        },
    ],
}


def test_version() -> None:
    assert fhir_version(CAP) == "4.0.1"
    assert is_r4(CAP)
    assert fhir_version({"resourceType": "CapabilityStatement"}) is None
    assert not is_r4({"fhirVersion": "3.0.2"})


def test_resource_types_only_from_server_mode() -> None:
    assert resource_types(CAP) == {"ServiceRequest", "Coverage", "Claim", "Encounter"}


def test_search_params_merge_type_and_rest_level() -> None:
    assert search_params(CAP, "ServiceRequest") == {"authored", "_lastUpdated", "_sort", "_id"}
    assert search_params(CAP, "Coverage") == {"beneficiary", "_id", "_lastUpdated"}
    # Rest-level parameters do not make an unexposed type searchable.
    assert search_params(CAP, "ExplanationOfBenefit") == set()
    assert search_params(CAP, "Appointment") == set()


def test_last_updated_declared_at_type_or_rest_level() -> None:
    assert supports_last_updated(CAP, "ServiceRequest")
    assert supports_last_updated(CAP, "Coverage")  # only via rest.searchParam
    without_rest_level = {**CAP, "rest": [{**CAP["rest"][0], "searchParam": []}]}
    assert supports_last_updated(without_rest_level, "ServiceRequest")
    assert not supports_last_updated(without_rest_level, "Coverage")
    assert not supports_last_updated(CAP, "ExplanationOfBenefit")


def test_sort_and_search_interaction() -> None:
    assert supports_sort(CAP, "ServiceRequest")
    assert not supports_sort(CAP, "Coverage")
    assert supports_search(CAP, "Coverage")
    assert not supports_search(CAP, "Claim")  # read only
    assert supports_search(CAP, "Encounter")  # no interaction list: assume search works
    assert not supports_search(CAP, "ExplanationOfBenefit")


def test_tolerates_junk() -> None:
    junk: dict[str, Any] = {"rest": [None, {"resource": [None, {"type": 3}], "searchParam": [{"x": 1}]}]}
    assert resource_types(junk) == set()
    assert search_params(junk, "Coverage") == set()
