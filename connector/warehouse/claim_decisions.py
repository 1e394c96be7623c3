"""Which claim decisions count, in one place for every query that counts them.

The rule is the one the denial views were created with (migration 0004): an EOB explaining a
ClaimResponse we hold is the same decision, entered-in-error is no decision, and only complete /
partial / error outcomes are adjudications. Read from that revision so the views, the metrics and the
report can never drift apart.
"""

from __future__ import annotations

import importlib

_CLAIM_FACTS = importlib.import_module("connector.warehouse.migrations.versions.0004_claim_facts")

#: A CTE named `eff`: the claim_adjudication rows that count as decisions.
COUNTED_DECISIONS: str = _CLAIM_FACTS._EFFECTIVE
#: The SQL tuple of outcomes that are adjudications.
ADJUDICATED_OUTCOMES: str = _CLAIM_FACTS._ADJUDICATED
