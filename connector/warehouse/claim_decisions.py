"""Which claim decisions count, in one place for every query that counts them.

The rule is the one the denial views were created with (migration 0004): an EOB explaining a
ClaimResponse we hold is the same decision, entered-in-error is no decision, and only complete /
partial / error outcomes are adjudications. A migration is frozen history, so the SQL is written out here
as well; tests/test_views_denials.py checks it is the revision's text, so the views, the metrics and the
report cannot drift apart.
"""

from __future__ import annotations

#: A CTE named `eff`: the claim_adjudication rows that count as decisions.
COUNTED_DECISIONS: str = """eff AS (
  SELECT a.* FROM claim_adjudication a
  WHERE (a.status IS NULL OR a.status <> 'entered-in-error')
    AND NOT (a.resource_type = 'ExplanationOfBenefit' AND a.claim_response_ref IS NOT NULL AND EXISTS (
    SELECT 1 FROM claim_adjudication r
    WHERE r.endpoint = a.endpoint AND r.resource_type = 'ClaimResponse'
      AND 'ClaimResponse/' || r.resource_id = a.claim_response_ref)))"""
#: The SQL tuple of outcomes that are adjudications.
ADJUDICATED_OUTCOMES: str = "('complete', 'partial', 'error')"
