"""The generated practice itself: valid R4 (R4B models), reproducible, and shaped like the issue asks."""

from __future__ import annotations

from collections import Counter

from fhir.resources.R4B import get_fhir_model_class

from tests.integration.practice import generate


def test_every_generated_resource_validates_against_the_r4b_models() -> None:
    practice = generate()
    for resource in practice.all():
        get_fhir_model_class(resource["resourceType"]).model_validate(resource)


def test_generation_is_reproducible_and_realistic() -> None:
    first, second = generate(), generate()
    assert first.resources == second.resources  # same seed, same ids and values
    counts = first.counts()
    assert counts["ServiceRequest"] == 2000
    assert len(set(first.requesters)) == 40  # every referrer referred at least once
    claims = Counter(c["use"] for c in first.of("Claim").values())
    assert claims["preauthorization"] > 0
    assert claims["claim"] > 0
    assert counts["ClaimResponse"] == counts["Claim"]
    denials = [
        adj["reason"]["coding"][0]["code"]
        for resp in first.of("ClaimResponse").values()
        for item in resp["item"]
        for adj in item["adjudication"]
        if "reason" in adj
    ]
    assert denials, "some claims are denied, with CARC codes"
    assert all("name" not in p and "address" not in p for p in first.of("Patient").values())
    based_on = {a["basedOn"][0]["reference"] for a in first.of("Appointment").values()}
    assert based_on <= {f"ServiceRequest/{rid}" for rid in first.of("ServiceRequest")}
