"""Therapy discipline (PT / OT / SLP / other) and visit kind (evaluation / treatment) from codes.

The shipped code map is `mappings/data/therapy_codes.csv` (CPT and SNOMED CT codes with their discipline
and, for billable services, whether they are an evaluation or a treatment); an endpoint adds or overrides
disciplines with `[endpoints.mapping.discipline_codes]` ("system|code" -> discipline). Codes are compared
by system AND code, never by code alone: "97110" in a local system is not the CPT code.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

DISCIPLINES: tuple[str, ...] = ("PT", "OT", "SLP", "other")
KINDS: tuple[str, ...] = ("evaluation", "treatment", "other")


@dataclass(frozen=True, slots=True)
class TherapyCodes:
    #: "system|code" -> PT / OT / SLP (codes shared by disciplines have none).
    discipline: Mapping[str, str]
    #: "system|code" -> evaluation / treatment.
    kind: Mapping[str, str]


@cache
def therapy_codes() -> TherapyCodes:
    """The shipped code map, read once from the package data."""
    text = resources.files("mappings").joinpath("data/therapy_codes.csv").read_text(encoding="utf-8")
    discipline: dict[str, str] = {}
    kind: dict[str, str] = {}
    for row in csv.DictReader(io.StringIO(text)):
        token = f"{row['system']}|{row['code']}"
        if row["discipline"]:
            if row["discipline"] not in DISCIPLINES:
                raise ValueError(f"therapy_codes.csv: {token}: unknown discipline")
            discipline[token] = row["discipline"]
        if row["kind"]:
            if row["kind"] not in KINDS:
                raise ValueError(f"therapy_codes.csv: {token}: unknown kind")
            kind[token] = row["kind"]
    return TherapyCodes(discipline=discipline, kind=kind)


def code_tokens(concepts: Iterable[dict[str, Any] | None]) -> list[str]:
    """Every coding of the concepts as "system|code", in order, without duplicates."""
    tokens: dict[str, None] = {}
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        for item in concept.get("coding") or ():
            if isinstance(item, dict) and item.get("code"):
                tokens.setdefault(f"{item.get('system') or ''}|{item['code']}", None)
    return list(tokens)


def code_texts(concepts: Iterable[dict[str, Any] | None]) -> list[str]:
    """The concepts' `text` and their codings' `display`, lower case: what a front desk typed."""
    texts: dict[str, None] = {}
    for concept in concepts:
        if not isinstance(concept, dict):
            continue
        values = [concept.get("text"), *((c or {}).get("display") for c in concept.get("coding") or ())]
        for value in values:
            if isinstance(value, str) and value.strip():
                texts.setdefault(value.strip().lower(), None)
    return list(texts)


def discipline_of(tokens: Iterable[str], extra: Mapping[str, str]) -> str:
    """The discipline of the first code that has one (the endpoint's own codes win), else "other".

    A code mapped to "other" in the config only decides when no other code names PT, OT or SLP, so a
    local catch-all code never hides a CPT evaluation code next to it.
    """
    shipped = therapy_codes().discipline
    fallback: str | None = None
    for token in tokens:
        found = extra.get(token) or shipped.get(token)
        if found == "other":
            fallback = fallback or found
        elif found is not None:
            return found
    return fallback or "other"


def visit_kind_and_source(
    tokens: Sequence[str], texts: Sequence[str], codes: Sequence[str], words: Sequence[str]
) -> tuple[str, str | None]:
    """The visit's kind and the rule that decided it: the shipped code map (`code`), else the endpoint's
    own evaluation codes or words of the type text (`config`), else `other` with no rule."""
    kind = visit_kind(tokens)
    if kind != "other":
        return kind, "code"
    wanted = set(codes)
    if any(token in wanted or token.split("|", 1)[-1] in wanted for token in tokens):
        return "evaluation", "config"
    if any(word in text for word in words for text in texts):
        return "evaluation", "config"
    return "other", None


def visit_kind(tokens: Iterable[str]) -> str:
    """ "evaluation" when any code is an evaluation, else "treatment" when any is a treatment, else "other".

    Evaluation wins: an initial visit billed as evaluation plus a treatment code is still the evaluation.
    """
    kinds = {therapy_codes().kind.get(token) for token in tokens}
    if "evaluation" in kinds:
        return "evaluation"
    if "treatment" in kinds:
        return "treatment"
    return "other"
