"""Referral sources: who sends referrals, from the requester's Practitioner, PractitionerRole or Organization.

A source row keeps the name of the referring clinician or organization, its type and its NPI: the
referral-source map practices use to decide whom to visit. The type comes from `PractitionerRole.code` /
`specialty`, `Organization.type` or `Practitioner.qualification` through the shipped map
`mappings/data/referral_source_types.csv`. Without a usable code a Practitioner (or a role of one) counts as
`physician` (therapy referrals are written by prescribers), an Organization as `other`.

Patients and relatives who refer themselves are never rows here: their names must not be stored. The
referral itself says `self` (see `requester_source_type`).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from functools import cache
from importlib import resources
from typing import Any

from mappings.discipline import code_tokens
from mappings.elements import reference, reference_type

NPI = "http://hl7.org/fhir/sid/us-npi"
SOURCE_TYPES: tuple[str, ...] = (
    "physician",
    "clinic",
    "hospital",
    "school",
    "case_manager",
    "self",
    "other",
    "unknown",
)
#: Resource types a referral source row is made from.
SOURCE_RESOURCES: tuple[str, ...] = ("Practitioner", "PractitionerRole", "Organization")
#: Requesters that are the patient or a relative: a self-referral.
SELF_REQUESTERS = frozenset({"Patient", "RelatedPerson"})


@cache
def _type_map() -> tuple[dict[str, str], tuple[tuple[str, str, str], ...]]:
    """("system|code" -> type, ((system, code prefix, type), ...)) from the shipped CSV."""
    text = resources.files("mappings").joinpath("data/referral_source_types.csv").read_text(encoding="utf-8")
    exact: dict[str, str] = {}
    prefixes: list[tuple[str, str, str]] = []
    for row in csv.DictReader(io.StringIO(text)):
        if row["source_type"] not in SOURCE_TYPES:
            raise ValueError(f"referral_source_types.csv: {row['system']}|{row['code']}: unknown type")
        if row["code"].endswith("*"):  # a whole branch of a hierarchical code system (NUCC taxonomy)
            prefixes.append((row["system"], row["code"][:-1], row["source_type"]))
        else:
            exact[f"{row['system']}|{row['code']}"] = row["source_type"]
    return exact, tuple(prefixes)


def source_type_of(tokens: Iterable[str]) -> str | None:
    """The type of the first "system|code" the shipped map knows, or None."""
    exact, prefixes = _type_map()
    for token in tokens:
        if token in exact:
            return exact[token]
        system, _, code = token.partition("|")
        for prefix_system, prefix, source_type in prefixes:
            if system == prefix_system and code.startswith(prefix):
                return source_type
    return None


def requester_source_type(requester: dict[str, Any] | None) -> str | None:
    """What the referral alone says about its source: `self`, `unknown` (no requester) or None (look up)."""
    if not isinstance(requester, dict) or not (
        requester.get("reference") or requester.get("identifier") or requester.get("display")
    ):
        return "unknown"
    if reference_type(requester) in SELF_REQUESTERS:
        return "self"
    return None


def _npi(resource: dict[str, Any]) -> str | None:
    for identifier in resource.get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == NPI and identifier.get("value"):
            return str(identifier["value"])
    return None


def _human_name(names: list[dict[str, Any]] | None) -> str | None:
    """The official (else usual, else first) name as one line: text, or prefix given family suffix."""
    candidates = [n for n in names or () if isinstance(n, dict)]
    if not candidates:
        return None
    ranked = sorted(candidates, key=lambda n: {"official": 0, "usual": 1}.get(n.get("use") or "", 2))
    name = ranked[0]
    if name.get("text"):
        return str(name["text"]).strip() or None
    parts = [*(name.get("prefix") or ()), *(name.get("given") or ())]
    if name.get("family"):
        parts.append(name["family"])
    text = " ".join(str(p).strip() for p in parts if p and str(p).strip())
    suffix = ", ".join(str(s).strip() for s in name.get("suffix") or () if s and str(s).strip())
    text = f"{text}, {suffix}" if text and suffix else text or suffix
    return text or None


def _display(ref: Any) -> str | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("display"), str):
        return None
    return ref["display"].strip() or None


def role_name(practitioner: str | None, organization: str | None) -> str | None:
    """A PractitionerRole's name: "<practitioner> (<organization>)", or whichever of the two is known.

    `v_source_names` builds the same text in SQL from the synced Practitioner and Organization names.
    """
    if practitioner and organization:
        return f"{practitioner} ({organization})"
    return practitioner or organization


def source_columns(resource: dict[str, Any]) -> dict[str, Any]:
    """The descriptive columns of a `referral_source` row (Practitioner, PractitionerRole, Organization)."""
    rtype = resource["resourceType"]
    practitioner_ref: str | None = None
    organization_ref: str | None = None
    practitioner_display: str | None = None
    organization_display: str | None = None
    if rtype == "Practitioner":
        qualifications = resource.get("qualification") or ()
        tokens = code_tokens(q.get("code") for q in qualifications if isinstance(q, dict))
        name = _human_name(resource.get("name"))
        source_type = source_type_of(tokens) or "physician"
    elif rtype == "PractitionerRole":
        tokens = code_tokens([*(resource.get("code") or ()), *(resource.get("specialty") or ())])
        practitioner, organization = resource.get("practitioner"), resource.get("organization")
        practitioner_ref, organization_ref = reference(practitioner), reference(organization)
        # The displays are kept apart so `v_source_names` can pair each with the synced name of the other.
        practitioner_display, organization_display = _display(practitioner), _display(organization)
        name = role_name(practitioner_display, organization_display)
        default = "physician" if isinstance(practitioner, dict) else "clinic" if organization else "other"
        source_type = source_type_of(tokens) or default
    elif rtype == "Organization":
        tokens = code_tokens(resource.get("type") or ())
        name = resource.get("name") or None
        organization_ref = reference(resource.get("partOf"))
        source_type = source_type_of(tokens) or "other"
    else:
        raise ValueError(f"not a referral source type: {rtype}")
    active = resource.get("active")
    return {
        "name": name,
        "source_type": source_type,
        "npi": _npi(resource),
        "practitioner_ref": practitioner_ref,
        "organization_ref": organization_ref,
        "practitioner_display": practitioner_display,
        "organization_display": organization_display,
        "type_codes": tokens,
        "active": active if isinstance(active, bool) else None,
    }
