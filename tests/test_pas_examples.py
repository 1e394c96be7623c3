"""The 47 Da Vinci PAS 2.2.1 examples (`tests/data/pas/`, issue 25 §5): every Claim and ClaimResponse in them,
standalone or inside a Bundle or Parameters, maps to `prior_auth_*` or is a dead letter with its reason.

Read by hand from the examples (X12 306 review action codes on the item adjudications):

| ClaimResponse | what it says | decision |
| ErrorResponseExample | `outcome = error`, an error code, no items | error |
| PASClaimInquiryResponseExample | A1 "Certified in total", number AUTH0001 | approved |
| PractitionerRequestorAdditionalContentResponseExample | A1 on the item and on an added item | approved |
| PractitionerRequestorPendingResponseExample | A4 "Pended" | pending |
| PractitionerRequestorResponseExample | A1, number AUTH0001 | approved |
| RejectionResponseExample | A3 "Not certified" | denied |

None of the examples approves part of a request, so the partial and modified cases are the official
"additional content" response with one review action changed (A3 on the added item, A2, A6).
The claim inquiry (`profile-claim-inquiry`) asks about the referral request; it is a dead letter, not a
sixth request.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.sync.pipeline import map_resources
from tests.flow_states import final_state
from tests.test_flows import prefect_harness  # noqa: F401 (the fixture)
from tests.test_payer_builders import ENDPOINT, SYNCED_AT

PAS = Path(__file__).parent / "data" / "pas"
RESPONSES = {
    "ErrorResponseExample": "error",
    "PASClaimInquiryResponseExample": "approved",
    "PractitionerRequestorAdditionalContentResponseExample": "approved",
    "PractitionerRequestorPendingResponseExample": "pending",
    "PractitionerRequestorResponseExample": "approved",
    "RejectionResponseExample": "denied",
}
#: Request Claims and their number of items.
REQUESTS = {
    "HomecareAuthorizationExample": 2,
    "HomecareAuthorizationUpdateExample": 3,
    "MedicalServicesAuthorizationExample": 1,
    "ReferralAuthorizationExample": 1,
    "SurgicalAuthorizationRequestExample": 1,
}
INQUIRIES = {"PASClaimInquiryExample"}
#: Claims and ClaimResponses in the 47 files, counting each copy inside a Bundle or Parameters.
OCCURRENCES = 30


def _walk(resource: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    if not isinstance(resource, dict):
        return
    if resource.get("resourceType") in ("Claim", "ClaimResponse"):
        yield where, resource
    for n, entry in enumerate(resource.get("entry") or ()):  # Bundle
        yield from _walk(entry.get("resource"), f"{where}#entry[{n}]")
    for n, parameter in enumerate(resource.get("parameter") or ()):  # Parameters
        yield from _walk(parameter.get("resource"), f"{where}#parameter[{n}]")


def occurrences() -> list[tuple[str, dict[str, Any]]]:
    files = sorted(PAS.glob("*.json"))
    assert len(files) == 47
    return [found for path in files for found in _walk(json.loads(path.read_text()), path.name)]


def _rows(resource: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    mapped = map_resources(ENDPOINT, resource["resourceType"], [resource], SYNCED_AT)
    assert not mapped.rejects, mapped.rejects[0].error
    return {
        table: [{k: v for k, v in row.items() if k != "content_hash"} for row in rows]
        for table, rows in mapped.mapped.items()
    }


def test_every_claim_and_response_maps_or_is_a_dead_letter_with_its_reason() -> None:
    found = occurrences()
    assert len(found) == OCCURRENCES
    assert {r["id"] for _, r in found} == {*RESPONSES, *REQUESTS, *INQUIRIES}
    standalone = {
        r["id"]: _rows(r)
        for where, r in found
        if where.startswith(r["resourceType"] + "-") and r["id"] not in INQUIRIES
    }
    assert set(standalone) == {*RESPONSES, *REQUESTS}
    for where, resource in found:
        rid = resource["id"]
        if rid in INQUIRIES:
            mapped = map_resources(ENDPOINT, "Claim", [resource], SYNCED_AT)
            (reject,) = mapped.rejects
            assert "claim inquiry" in reject.error, where
            assert reject.error.startswith(f"Claim/{rid}:"), where
            continue
        rows = _rows(resource)
        # A copy inside a Bundle maps exactly as the standalone file (only the narrative differs).
        assert rows == standalone[rid], where
        if rid in RESPONSES:
            (response,) = rows["prior_auth_response"]
            assert response["decision"] == RESPONSES[rid], where
            assert response["request_ref"] == "Claim/ReferralAuthorizationExample"
        else:
            (request,) = rows["prior_auth_request"]
            assert request["items_requested"] == REQUESTS[rid] == len(rows["prior_auth_request_item"])


def test_the_authorization_number_comes_from_the_review_action() -> None:
    numbers = {
        rid: rows["prior_auth_response"][0]["pre_auth_ref"]
        for rid, rows in (
            (r["id"], _rows(r)) for where, r in occurrences() if where.startswith("ClaimResponse-")
        )
    }
    # PAS 2.x has no preAuthRef; the approvals carry their number in reviewAction.number.
    assert numbers == {
        "ErrorResponseExample": None,
        "PASClaimInquiryResponseExample": "AUTH0001",
        "PractitionerRequestorAdditionalContentResponseExample": "AUTH0001",
        "PractitionerRequestorPendingResponseExample": None,
        "PractitionerRequestorResponseExample": "AUTH0001",
        "RejectionResponseExample": None,
    }


def _with_action(resource: dict[str, Any], element: str, code: str) -> dict[str, Any]:
    """The response with the review action code of its first `item` or `addItem` set to `code`."""
    changed = copy.deepcopy(resource)
    changed["id"] = f"{resource['id']}-{element}-{code}"
    (adjudication,) = changed[element][0]["adjudication"]
    (action,) = adjudication["extension"]
    concept = next(sub for sub in action["extension"] if sub["url"].endswith("extension-reviewActionCode"))
    concept["valueCodeableConcept"]["coding"][0]["code"] = code
    return changed


@pytest.mark.parametrize(
    ("element", "code", "decision", "approved_items", "item_decisions"),
    [
        ("addItem", "A3", "partial", 1, ["approved", "denied"]),
        ("item", "A2", "partial", 2, ["partial", "approved"]),
        ("item", "A6", "modified", 2, ["modified", "approved"]),
        ("addItem", "A4", "pending", 1, ["approved", "pending"]),
    ],
)
def test_part_of_a_request_approved(
    element: str, code: str, decision: str, approved_items: int, item_decisions: list[str]
) -> None:
    official = json.loads(
        (PAS / "ClaimResponse-PractitionerRequestorAdditionalContentResponseExample.json").read_text()
    )
    rows = _rows(_with_action(official, element, code))
    (response,) = rows["prior_auth_response"]
    assert response["decision"] == decision
    assert response["items_approved"] == approved_items
    assert [item["decision"] for item in rows["prior_auth_response_item"]] == item_decisions


def test_synced_from_a_folder_every_resource_is_loaded_or_a_dead_letter(
    prefect_harness: None,  # noqa: F811 (the imported fixture)
    tmp_path: Path,
    warehouse_url: str,
    engine: Engine,
) -> None:
    from flows.sync import sync_all

    export = tmp_path / "export"
    export.mkdir()
    distinct: dict[str, dict[str, dict[str, Any]]] = {"Claim": {}, "ClaimResponse": {}}
    for _, resource in occurrences():
        distinct[resource["resourceType"]].setdefault(resource["id"], resource)
    for rtype, resources in distinct.items():
        lines = (json.dumps(r) for r in resources.values())
        (export / f"{rtype}.ndjson").write_text("\n".join(lines) + "\n")
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{warehouse_url}"\n'
        '[[endpoints]]\nname = "pas"\nndjson_dir = "export"\nresources = ["Claim", "ClaimResponse"]\n'
    )
    assert final_state(sync_all(str(config), run_id="pas", return_state=True)).is_completed()
    with engine.connect() as conn:
        runs = {
            row.resource_type: (row.fetched, row.loaded, row.rejected, row.unchanged)
            for row in conn.execute(sa.text("SELECT * FROM sync_run WHERE run_id = 'pas'"))
        }
        letters = conn.execute(
            sa.text("SELECT resource_id, error FROM dead_letter WHERE endpoint = 'pas'")
        ).all()
        view = {
            row.claim_id: (row.response_id, row.decision, row.pre_auth_ref)
            for row in conn.execute(sa.text("SELECT * FROM prior_authorization WHERE endpoint = 'pas'"))
        }
    assert runs == {"Claim": (6, 5, 1, 0), "ClaimResponse": (6, 6, 0, 0)}
    ((letter_id, reason),) = letters
    assert letter_id == "PASClaimInquiryExample"
    assert "claim inquiry" in reason
    # Every response answers the referral request; the latest (the inquiry's answer, 2019) decides.
    assert view == {
        "ReferralAuthorizationExample": ("PASClaimInquiryResponseExample", "approved", "AUTH0001"),
        **{claim: (None, "pending", None) for claim in REQUESTS if claim != "ReferralAuthorizationExample"},
    }
