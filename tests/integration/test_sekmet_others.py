"""The practice written in others' styles (`tests/test_others_practice.py`), served by sekmet-fhir and synced
by search: the same hand-worked funnel, sources and visit kinds as from the NDJSON folder."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from connector.warehouse.engine import make_engine
from tests.integration.practice import post_transaction, put_entry
from tests.integration.test_sekmet import sync
from tests.test_others_practice import DATA, RESOURCES, VISITS_TOML, check_others_practice

ENDPOINT = "others"


@pytest.fixture(scope="module")
def served(own_sekmet_base_url: str) -> str:
    resources = [
        json.loads(line) for path in sorted(DATA.glob("*.ndjson")) for line in path.read_text().splitlines()
    ]
    with httpx.Client(base_url=own_sekmet_base_url, timeout=120) as client:
        post_transaction(client, [put_entry(r) for r in resources])
    return own_sekmet_base_url


def test_others_practice_from_a_fhir_server(served: str, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'warehouse.db'}"
    listed = ", ".join(f'"{r}"' for r in RESOURCES)
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{url}"\n\n[[endpoints]]\nname = "{ENDPOINT}"\nbase_url = "{served}"\n'
        f'resources = [{listed}]\n[endpoints.auth]\ntype = "none"\n{VISITS_TOML}',
        encoding="utf-8",
    )
    report = sync(config)
    loaded = {row["resource_type"]: row["loaded"] for row in report["streams"]}
    assert loaded["ServiceRequest"] == 10
    engine = make_engine(url)
    try:
        check_others_practice(engine, ENDPOINT)
        with engine.connect() as conn:
            rejected = conn.execute(sa.text("SELECT COUNT(*) FROM dead_letter")).scalar_one()
        assert rejected == 0
    finally:
        engine.dispose()
