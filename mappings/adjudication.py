"""ClaimResponse / ExplanationOfBenefit (use = claim) -> `claim_adjudication` and `denial` rows.

One `claim_adjudication` row per response (the payer's decision on one claim) and one `denial` row per
denied or reduced line, or one per claim (`line_key` "claim") when the denial is at header level.

Where the decision is read from (`outcome` is only a processing status: `complete` does not mean paid):
- line amounts in `item[].adjudication` (and `addItem[]`): category submitted / eligible / benefit /
  denied, CARIN `noncovered` / `paidtoprovider`, Blue Button `line_*_amt` variables;
- reasons in `adjudication.reason`: X12 CARC (with the group code CO / PR / OA / PI when given), X12 RARC
  remarks, HL7 adjudication-reason; `error[].code` (HL7 adjudication-error) for rejected claims;
- CARIN Blue Button `adjudication[benefitpaymentstatus].reason` and `payment.type` (paid / denied /
  partiallypaid).
Reason codes get a category and a next action from `mappings/data/denial_reasons.csv` and
`denial_categories.csv`; unknown codes get category `other` and keep their code.

Cross-resource facts (resolved by a later paying response, days from claim to decision, appeals) are
derived in the `v_denial_*` views, because the pipeline loads each resource on its own.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from functools import cache
from importlib import resources
from typing import Any

from mappings.elements import (
    coding,
    object_at,
    parse_fhir_datetime,
    reference,
    reference_and_type,
    resource_meta,
)
from mappings.errors import MappingError
from mappings.referral import resource_hash
from mappings.types import MapContext, MappedRecords

CARC = "https://x12.org/codes/claim-adjustment-reason-codes"
RARC = "https://x12.org/codes/remittance-advice-remark-codes"
HL7_ADJUDICATION_REASON = "http://terminology.hl7.org/CodeSystem/adjudication-reason"
HL7_ADJUDICATION_ERROR = "http://terminology.hl7.org/CodeSystem/adjudication-error"
CARIN_DISCRIMINATOR = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBAdjudicationDiscriminator"
CARIN_PAYMENT_STATUS = "http://hl7.org/fhir/us/carin-bb/CodeSystem/C4BBPayerAdjudicationStatus"

# Spellings of the X12 code systems seen in the wild (http, www., the older codes/ paths).
_CARC_SYSTEMS = frozenset(
    {
        CARC,
        "http://x12.org/codes/claim-adjustment-reason-codes",
        "https://www.x12.org/codes/claim-adjustment-reason-codes",
        "http://www.x12.org/codes/claim-adjustment-reason-codes",
        "urn:oid:2.16.840.1.113883.6.255.1232",  # CARC OID (HL7 terminology)
    }
)
_RARC_SYSTEMS = frozenset(
    {
        RARC,
        "http://x12.org/codes/remittance-advice-remark-codes",
        "https://www.x12.org/codes/remittance-advice-remark-codes",
        "http://www.x12.org/codes/remittance-advice-remark-codes",
        "urn:oid:2.16.840.1.113883.6.255.1231",
    }
)
_SYSTEM_KEYS = {
    HL7_ADJUDICATION_REASON: "hl7-adjudication-reason",
    HL7_ADJUDICATION_ERROR: "hl7-adjudication-error",
}


def _group_codes() -> frozenset[str]:
    """CO / PR / OA / PI / CR, from `claim_adjustment_groups.csv` (which also says what each means)."""
    text = (
        resources.files("mappings").joinpath("data/claim_adjustment_groups.csv").read_text(encoding="utf-8")
    )
    return frozenset(row["group_code"] for row in csv.DictReader(text.splitlines()))


GROUP_CODES = _group_codes()
# "CO-45", "CO45", "PR 1": a CARC written with its group code in front (common in EMR exports).
_GROUPED_CARC = re.compile(r"(?P<group>CO|PR|OA|PI|CR)[-\s]?(?P<code>[A-Z]?\d{1,3}|[A-Z]\d{0,2})")

# Adjudication categories (any system) -> the amount kind they carry. Blue Button (Synthea) uses variable
# URLs as category codes.
_BB = "https://bluebutton.cms.gov/resources/variables/"
_AMOUNT_KINDS: dict[str, str] = {
    "submitted": "submitted",
    f"{_BB}line_sbmtd_chrg_amt": "submitted",
    "eligible": "eligible",
    f"{_BB}line_alowd_chrg_amt": "eligible",
    "benefit": "benefit",
    f"{_BB}line_prvdr_pmt_amt": "paid",
    f"{_BB}line_bene_pmt_amt": "paid",
    "paidtoprovider": "paid",
    "paidtopatient": "paid",
    "denied": "denied",
    "noncovered": "noncovered",
    "copay": "patient",
    "deductible": "patient",
    "coinsurance": "patient",
    f"{_BB}line_bene_ptb_ddctbl_amt": "patient",
    f"{_BB}line_coinsrnc_amt": "patient",
}
# CARIN discriminator categories carry a status in `reason`, not an adjustment reason.
_STATUS_CATEGORIES = frozenset({"benefitpaymentstatus", "billingnetworkstatus", "renderingnetworkstatus"})
_ZERO = Decimal(0)
_ADJUDICATED_OUTCOMES = frozenset({"complete", "partial", "error"})
_DISPOSITION_MAX = 200


@dataclass(frozen=True, slots=True)
class Category:
    name: str
    is_denial: bool
    next_action: str


@cache
def categories() -> dict[str, Category]:
    """Reason category -> whether it is a denial and the next action (from `denial_categories.csv`)."""
    text = resources.files("mappings").joinpath("data/denial_categories.csv").read_text(encoding="utf-8")
    return {
        row["category"]: Category(row["category"], row["is_denial"] == "true", row["next_action"])
        for row in csv.DictReader(text.splitlines())
    }


@cache
def reason_table() -> dict[tuple[str, str], str]:
    """(system key, code) -> category, from `denial_reasons.csv`; system keys: carc, hl7-adjudication-*."""
    text = resources.files("mappings").joinpath("data/denial_reasons.csv").read_text(encoding="utf-8")
    table = {(row["system"], row["code"]): row["category"] for row in csv.DictReader(text.splitlines())}
    unknown = {cat for cat in table.values() if cat not in categories()}
    if unknown:  # a typo in the shipped data must fail loudly, not become silent "other"
        raise RuntimeError(f"denial_reasons.csv names unknown categories: {sorted(unknown)}")
    return table


@dataclass(frozen=True, slots=True)
class Reason:
    """One adjustment reason: system key (carc, rarc, hl7-..., or the raw system), code, group code."""

    system: str
    code: str
    group: str | None = None

    @property
    def category(self) -> str:
        return reason_table().get((self.system, self.code), "other")

    @property
    def known(self) -> bool:
        return (self.system, self.code) in reason_table()

    @property
    def is_denial(self) -> bool:
        return categories()[self.category].is_denial

    @property
    def token(self) -> str:
        """ "CO-197" for a CARC with a group code, else the code ("197", "ar002")."""
        return f"{self.group}-{self.code}" if self.group else self.code


def _reasons_of(concept: Any, group_hint: str | None = None) -> tuple[list[Reason], list[str]]:
    """(adjustment reasons, RARC remark codes) of one CodeableConcept."""
    reasons: list[Reason] = []
    remarks: list[str] = []
    if not isinstance(concept, dict):
        return reasons, remarks
    group = group_hint
    items = [c for c in concept.get("coding") or () if isinstance(c, dict) and isinstance(c.get("code"), str)]
    for item in items:  # a group code given as its own coding applies to the CARCs beside it
        system = item.get("system") or ""
        if "claim-adjustment-group" in system and item["code"].upper() in GROUP_CODES:
            group = item["code"].upper()
    for item in items:
        system, code = item.get("system") or "", item["code"].strip()
        if "claim-adjustment-group" in system:
            continue
        if system in _RARC_SYSTEMS:
            remarks.append(code)
        elif system in _CARC_SYSTEMS:
            grouped = _GROUPED_CARC.fullmatch(code.upper())
            if grouped:
                reasons.append(Reason("carc", grouped["code"], grouped["group"]))
            else:
                reasons.append(Reason("carc", code.upper(), group))
        else:
            reasons.append(Reason(_SYSTEM_KEYS.get(system, system or "unknown"), code))
    return reasons, remarks


def _group_from_extensions(element: dict[str, Any]) -> str | None:
    """A group code carried in an extension of the adjudication (valueCode / valueCoding / concept)."""
    for ext in element.get("extension") or ():
        if not isinstance(ext, dict):
            continue
        values = [ext.get("valueCode")]
        if isinstance(ext.get("valueCoding"), dict):
            values.append(ext["valueCoding"].get("code"))
        if isinstance(ext.get("valueCodeableConcept"), dict):
            values.extend(c.get("code") for c in ext["valueCodeableConcept"].get("coding") or ())
        for value in values:
            if isinstance(value, str) and value.upper() in GROUP_CODES and "group" in str(ext.get("url")):
                return value.upper()
    return None


def _money(value: Any) -> Decimal | None:
    if not isinstance(value, dict) or value.get("value") is None:
        return None
    try:
        return Decimal(str(value["value"]))
    except InvalidOperation:
        return None


def _amount_kind(codes: list[str]) -> str | None:
    """The amount kind of the first category code that has one."""
    for code in codes:
        kind = _AMOUNT_KINDS.get(code)
        if kind is not None:
            return kind
    return None


def _category_codes(adjudication: dict[str, Any]) -> list[str]:
    concept = adjudication.get("category")
    if not isinstance(concept, dict):
        return []
    codes = []
    for item in concept.get("coding") or ():  # a loop: cheaper than a comprehension for one or two codings
        if isinstance(item, dict) and item.get("code"):
            codes.append(item["code"])
    return codes


@dataclass(slots=True)
class LineFacts:
    """What the adjudications of one line (item, added item or the claim header) say."""

    amounts: dict[str, Decimal] = field(default_factory=dict)
    reasons: list[Reason] = field(default_factory=list)
    remarks: list[str] = field(default_factory=list)
    #: CARIN benefitpaymentstatus: paid / denied / partiallypaid (network statuses ignored).
    payment_status: str | None = None
    errors: list[Reason] = field(default_factory=list)

    def add(self, adjudications: Any, *, amounts: bool = True) -> None:
        for adj in adjudications or ():
            if not isinstance(adj, dict):
                continue
            cats = _category_codes(adj)
            if not _STATUS_CATEGORIES.isdisjoint(cats):
                if "benefitpaymentstatus" in cats:
                    status = coding(adj.get("reason"), CARIN_PAYMENT_STATUS)[1]
                    if status in {"paid", "denied", "partiallypaid"}:
                        self.payment_status = status
                continue
            reason = adj.get("reason")
            group = _group_from_extensions(adj)
            if isinstance(reason, dict):  # most adjudications carry an amount only
                reasons, remarks = _reasons_of(reason, group)
                self.reasons.extend(r for r in reasons if r not in self.reasons)
                self.remarks.extend(r for r in remarks if r not in self.remarks)
            amount = _money(adj.get("amount"))
            if not amounts or amount is None:
                continue
            kind = _amount_kind(cats)
            if kind is not None:
                self.amounts[kind] = self.amounts.get(kind, _ZERO) + amount

    @property
    def benefit(self) -> Decimal | None:
        if "benefit" in self.amounts:
            return self.amounts["benefit"]
        return self.amounts.get("paid")

    @property
    def refused(self) -> Decimal:
        """The denied plus the (CARIN) non-covered amount."""
        return self.amounts.get("denied", Decimal(0)) + self.amounts.get("noncovered", Decimal(0))

    @property
    def denial_reasons(self) -> list[Reason]:
        return [r for r in self.errors + self.reasons if r.is_denial]

    @property
    def adjudicated(self) -> bool:
        return bool(self.amounts or self.reasons or self.payment_status or self.errors)


def line_outcome(facts: LineFacts, header_denied: bool) -> str:
    """paid / reduced / denied / not_adjudicated for one line.

    denied: an error on the line, the claim denied at header level, CARIN status denied, a denied amount
      covering the whole charge, or nothing paid while something was charged or a denial reason given
      (a line paid at 0 because of deductible / coinsurance only is `paid`: not a denial);
    reduced: something paid, but a denied / non-covered amount, a denial reason or CARIN partiallypaid.
    """
    if not facts.adjudicated and not header_denied:
        return "not_adjudicated"
    if facts.errors or header_denied or facts.payment_status == "denied":
        return "denied"
    benefit = facts.benefit
    denied = facts.refused
    charged = facts.amounts.get("submitted", facts.amounts.get("eligible"))
    if charged is not None and charged > 0 and denied >= charged:
        return "denied"
    if benefit is not None and benefit <= 0:
        if facts.denial_reasons or denied > 0:
            return "denied"
        if facts.reasons or facts.amounts.get("patient", Decimal(0)) > 0:
            return "paid"  # only deductible / coinsurance / contractual reasons: the patient's share
        if charged is not None and charged > 0:
            return "denied"
        return "paid"  # nothing charged, nothing paid, no reason: a zero line
    if denied > 0 or facts.denial_reasons or facts.payment_status == "partiallypaid":
        return "reduced"
    return "paid"


def denied_amount(facts: LineFacts, outcome: str) -> Decimal | None:
    """The amount the payer refused: the denied / non-covered amount when given; else for a denied line
    the charge, for a reduced line what was allowed but neither paid nor left to the patient."""
    if facts.refused > 0:
        return facts.refused
    if outcome == "denied":
        return facts.amounts.get("submitted", facts.amounts.get("eligible"))
    eligible, benefit = facts.amounts.get("eligible"), facts.benefit
    if eligible is not None and benefit is not None:
        rest = eligible - benefit - facts.amounts.get("patient", Decimal(0))
        return rest if rest > 0 else None
    return None


def _float(value: Decimal | None) -> float | None:
    return None if value is None else float(round(value, 2))


def _identifier_token(ref: Any) -> str | None:
    if not isinstance(ref, dict) or not isinstance(ref.get("identifier"), dict):
        return None
    ident = ref["identifier"]
    if not ident.get("value"):
        return None
    return f"{ident.get('system') or ''}|{ident['value']}"


def payer_key(insurer: Any) -> str | None:
    """The payer as one key: the insurer's reference, else its identifier token, else its display."""
    if not isinstance(insurer, dict):
        return None
    display = insurer.get("display")
    return reference(insurer) or _identifier_token(insurer) or (display if isinstance(display, str) else None)


def _line_key(kind: str, index: int) -> str:
    return f"{kind}-{index}"


@dataclass(slots=True)
class _Line:
    key: str
    item_sequence: int | None
    product_code: str | None
    facts: LineFacts


def _product(item: dict[str, Any]) -> str | None:
    concept = item.get("productOrService")
    return coding(concept)[1] if isinstance(concept, dict) else None


def _lines(resource: dict[str, Any]) -> list[_Line]:
    """The adjudicated lines: items (by sequence), added items (by position) and error-only lines."""
    is_eob = resource["resourceType"] == "ExplanationOfBenefit"
    lines: dict[str, _Line] = {}
    replaced: set[int] = set()
    for item in resource.get("item") or ():
        seq = item.get("sequence") if is_eob else item.get("itemSequence")
        if not isinstance(seq, int):
            continue
        facts = LineFacts()
        facts.add(item.get("adjudication"))
        # Reasons given on details / sub-details belong to the line; their amounts are already in the
        # item's own adjudication (it is the sum), unless the item has none.
        for detail in item.get("detail") or ():
            facts.add(detail.get("adjudication"), amounts=not facts.amounts)
            for sub in detail.get("subDetail") or ():
                facts.add(sub.get("adjudication"), amounts=False)
        key = _line_key("item", seq)
        lines[key] = _Line(key, seq, _product(item), facts)
    for position, added in enumerate(resource.get("addItem") or (), start=1):
        facts = LineFacts()
        facts.add(added.get("adjudication"))
        sequences = [s for s in added.get("itemSequence") or () if isinstance(s, int)]
        replaced.update(sequences)
        key = _line_key("addItem", position)
        lines[key] = _Line(key, sequences[0] if sequences else None, _product(added), facts)
    for error in resource.get("error") or ():  # ClaimResponse only
        reasons, _ = _reasons_of(error.get("code"))
        seq = error.get("itemSequence")
        key = _line_key("item", seq) if isinstance(seq, int) else "claim"
        line = lines.setdefault(key, _Line(key, seq if isinstance(seq, int) else None, None, LineFacts()))
        line.facts.errors.extend(reasons or [Reason("hl7-adjudication-error", "unspecified")])
    # An item the payer replaced by added items, paid nothing and gave no reason for was re-coded, not
    # denied: its line is the added item.
    for line in list(lines.values()):
        if (
            line.key.startswith("item-")
            and line.item_sequence in replaced
            and not line.facts.denial_reasons
            and (line.facts.benefit or 0) == 0
        ):
            del lines[line.key]
    return list(lines.values())


def _header_denied(resource: dict[str, Any], header: LineFacts, lines: list[_Line]) -> bool:
    """A denial of the whole claim: outcome error without line errors, or CARIN payment.type denied."""
    if resource.get("outcome") == "error" and not any(line.facts.errors for line in lines):
        return True
    if coding(resource.get("payment", {}).get("type"), CARIN_PAYMENT_STATUS)[1] == "denied":
        return True
    return header.payment_status == "denied"


def _totals(resource: dict[str, Any]) -> dict[str, Decimal]:
    """Amount kind -> the sum of the `total` entries of that kind (read once for every kind)."""
    total = resource.get("total")
    sums: dict[str, Decimal] = {}
    if isinstance(total, dict):  # Claim.total is Money; ClaimResponse / EOB.total is a list
        return sums
    for entry in total or ():
        codes = _category_codes(entry)
        amount = _money(entry.get("amount"))
        if amount is None:
            continue
        # An entry counts once per kind, however many of its codes name that kind.
        for kind in {_AMOUNT_KINDS[c] for c in codes if c in _AMOUNT_KINDS}:
            sums[kind] = (sums.get(kind) or Decimal(0)) + amount
    return sums


def map_adjudication(resource: dict[str, Any], ctx: MapContext) -> MappedRecords:
    """Map a validated ClaimResponse or ExplanationOfBenefit of use `claim`; other uses give {}."""
    if resource.get("use") != "claim":
        return {}  # pre-authorizations and predeterminations belong to the payer subject
    rtype, rid, version_id, last_updated, _ = resource_meta(resource)
    if rtype not in {"ClaimResponse", "ExplanationOfBenefit"}:
        raise MappingError(f"{rtype}/{rid}: expected a ClaimResponse or ExplanationOfBenefit")
    try:
        return _map(resource, ctx, rtype, rid, version_id, last_updated)
    except MappingError as exc:
        raise MappingError(f"{rtype}/{rid}: {exc}") from None


def _claim_reference(resource: dict[str, Any], rtype: str) -> tuple[str | None, str | None]:
    """(Claim/id, identifier token) of the claim this response decides on."""
    ref = resource.get("request" if rtype == "ClaimResponse" else "claim")
    literal, target_type = reference_and_type(ref)
    if literal is not None and target_type not in (None, "Claim"):
        raise MappingError(
            f"{'request' if rtype == 'ClaimResponse' else 'claim'}: does not reference a Claim"
        )
    return literal, _identifier_token(ref)


def _map(
    resource: dict[str, Any],
    ctx: MapContext,
    rtype: str,
    rid: str,
    version_id: str | None,
    last_updated: datetime | None,
) -> MappedRecords:
    created = parse_fhir_datetime(resource.get("created"), "created")
    if created is None:  # required in R4; without it there is no decision date to report on
        raise MappingError("created: missing")
    claim_ref, claim_identifier = _claim_reference(resource, rtype)
    claim_key = claim_ref or (
        f"Claim?identifier={claim_identifier}" if claim_identifier else f"{rtype}/{rid}"
    )
    payment = object_at(resource, "payment")
    header = LineFacts()
    header.add(resource.get("adjudication"))
    totals = _totals(resource)
    for kind in ("submitted", "eligible", "benefit", "paid"):  # header amounts fall back to the totals
        if kind not in header.amounts and kind in totals:
            header.amounts[kind] = totals[kind]
    lines = _lines(resource)
    header_denied = _header_denied(resource, header, lines)
    if not lines and (header.adjudicated or header_denied):
        lines = [_Line("claim", None, None, header)]
    elif header_denied:
        for line in lines:  # the header's reasons explain every line
            line.facts.reasons.extend(r for r in header.reasons if r not in line.facts.reasons)
            line.facts.remarks.extend(r for r in header.remarks if r not in line.facts.remarks)

    disposition = resource.get("disposition")
    disposition = disposition[:_DISPOSITION_MAX] if isinstance(disposition, str) else None
    insurer = resource.get("insurer")
    payer = payer_key(insurer)
    common: dict[str, Any] = {
        "endpoint": ctx.endpoint,
        "resource_type": rtype,
        "resource_id": rid,
        "version_id": version_id,
        "last_updated": last_updated,
        "content_hash": resource_hash(resource, ctx),
    }
    denials: list[dict[str, Any]] = []
    adjudicated = 0
    for line in lines:
        outcome = line_outcome(line.facts, header_denied)
        if outcome == "not_adjudicated":
            continue
        adjudicated += 1
        if outcome not in {"denied", "reduced"}:
            continue
        denials.append(
            _denial_row(
                common,
                line,
                outcome,
                resource,
                created,
                claim_ref,
                claim_identifier,
                claim_key,
                payer,
                disposition,
            )
        )
    amounts = [Decimal(str(d["denied_amount"])) for d in denials if d["denied_amount"] is not None]
    total_denied = sum(amounts, Decimal(0)) if amounts else None
    outcome_code = resource.get("outcome")
    benefit_total = totals.get("benefit")
    if benefit_total is None:
        benefit_total = totals.get("paid")
    payment_type = coding(payment.get("type"))[1]
    # Rows are filled in place, from a copy of the key columns: a {**key, ...} literal would insert every
    # column twice, and rows are built for every resource.
    row = dict(common)
    row["status"] = resource.get("status")
    row["outcome"] = outcome_code
    row["disposition"] = disposition
    row["claim_ref"] = claim_ref
    row["claim_identifier"] = claim_identifier
    row["claim_key"] = claim_key
    row["claim_response_ref"] = reference(resource.get("claimResponse")) if rtype != "ClaimResponse" else None
    row["patient_ref"] = reference(resource.get("patient"))
    row["insurer_ref"] = reference(insurer)
    row["payer_key"] = payer
    row["provider_ref"] = reference(resource.get("requestor" if rtype == "ClaimResponse" else "provider"))
    row["created"] = created
    row["payment_type"] = payment_type
    row["payment_date"] = parse_fhir_datetime(payment.get("date"), "payment.date")
    row["payment_amount"] = _float(_money(payment.get("amount")))
    row["submitted_amount"] = _float(totals.get("submitted"))
    row["benefit_amount"] = _float(benefit_total)
    row["denied_amount"] = _float(total_denied)
    row["line_count"] = adjudicated
    row["denied_line_count"] = len(denials)
    row["paid_in_full"] = (
        adjudicated > 0
        and outcome_code in _ADJUDICATED_OUTCOMES
        and outcome_code != "error"
        and not denials
        and payment_type not in {"denied", "partiallypaid"}
    )
    return {"claim_adjudication": [row], "denial": denials}


def _denial_row(
    common: dict[str, Any],
    line: _Line,
    outcome: str,
    resource: dict[str, Any],
    created: datetime,
    claim_ref: str | None,
    claim_identifier: str | None,
    claim_key: str,
    payer: str | None,
    disposition: str | None,
) -> dict[str, Any]:
    facts = line.facts
    denial_reasons = facts.denial_reasons
    primary = denial_reasons[0] if denial_reasons else None
    # Without a reason code, a CARIN non-covered amount still says why.
    category = (
        primary.category
        if primary
        else ("non_covered" if facts.amounts.get("noncovered", 0) > 0 else "other")
    )
    carcs = [r for r in facts.errors + facts.reasons if r.system == "carc"]
    row = dict(common)
    row["line_key"] = line.key
    row["item_sequence"] = line.item_sequence
    row["product_code"] = line.product_code
    row["claim_ref"] = claim_ref
    row["claim_identifier"] = claim_identifier
    row["claim_key"] = claim_key
    row["payer_key"] = payer
    row["outcome"] = resource.get("outcome")
    row["disposition"] = disposition
    row["line_outcome"] = outcome
    row["submitted_amount"] = _float(facts.amounts.get("submitted"))
    row["eligible_amount"] = _float(facts.amounts.get("eligible"))
    row["benefit_amount"] = _float(facts.benefit)
    row["denied_amount"] = _float(denied_amount(facts, outcome))
    row["reason_system"] = primary.system if primary else None
    row["reason_code"] = primary.code if primary else None
    row["group_code"] = primary.group if primary else next((r.group for r in carcs if r.group), None)
    row["reason_known"] = primary.known if primary else False
    row["reason_codes"] = [r.token for r in facts.errors + facts.reasons]
    row["remark_codes"] = list(facts.remarks)
    row["category"] = category
    row["next_action"] = categories()[category].next_action
    row["decided_at"] = created
    return row
