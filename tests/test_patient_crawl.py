"""The per-patient crawl, against simulators of Oracle Health, athenahealth and Epic that refuse (400) a
ServiceRequest search without `patient`, `_lastUpdated` prefixes they do not take (Oracle: ge / le with a
time; athena: gt / ge; Epic: none), a missing `ah-practice` (athena) and a `_count` over 100 (athena), and
return each patient's referrals on one page whatever `_count` says. A full sync loads every referral; after
changes, new referrals and a new patient in the group, an incremental sync brings exactly those, with no 400
in the server's log."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import respx
import sqlalchemy as sa
from typer.testing import CliRunner

from connector.cli import app
from connector.sync.crawl import group_members

runner = CliRunner()
T0 = datetime(2026, 10, 1, tzinfo=UTC)


def referral(n: int, patient: str, updated: datetime, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "id": f"sr{n}",
        "meta": {"lastUpdated": updated.isoformat().replace("+00:00", "Z")},
        "status": status,
        "intent": "order",
        "authoredOn": "2026-09-01",
        "subject": {"reference": f"Patient/{patient}"},
    }


def _outcome(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "error", "code": "invalid", "diagnostics": text}],
    }


@dataclass(frozen=True)
class Rules:
    """What one vendor's server enforces, as its developer documentation words it."""

    software: str
    prefixes: tuple[str, ...]  # _lastUpdated prefixes taken; () = no _lastUpdated at all
    practice: str | None = None  # athena: the ah-practice every request must carry
    max_count: int | None = None  # a larger _count is clamped silently


VENDORS = {
    "oracle": Rules("Cerner Millennium", ("ge", "le")),
    "athena": Rules("athenaNet", ("gt", "ge"), practice="Organization/a-1.Practice-195900", max_count=100),
    "epic": Rules("Epic", ()),
}


class VendorSimulator:
    def __init__(self, base: str, rules: Rules, patients: list[str]) -> None:
        self.base, self.rules, self.group = base, rules, patients
        self.referrals: dict[str, dict[str, Any]] = {}
        self.log: list[tuple[int, httpx.URL]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        response = self._answer(request)
        self.log.append((response.status_code, request.url))
        return response

    def _capability(self) -> dict[str, Any]:
        search = [{"name": "_lastUpdated", "type": "date"}] if self.rules.prefixes else []
        return {
            "resourceType": "CapabilityStatement",
            "fhirVersion": "4.0.1",
            "software": {"name": self.rules.software},
            "rest": [
                {
                    "mode": "server",
                    "searchParam": search,
                    "resource": [
                        {"type": "ServiceRequest", "searchParam": [{"name": "authored", "type": "date"}]},
                        {"type": "Group"},
                    ],
                }
            ],
        }

    def _answer(self, request: httpx.Request) -> httpx.Response:
        path, params = request.url.path, request.url.params
        if self.rules.practice is not None and params.get("ah-practice") != self.rules.practice:
            return httpx.Response(400, json=_outcome("The ah-practice parameter is required"))
        if path.endswith("/metadata"):
            return httpx.Response(200, json=self._capability())
        if path.endswith("/Group/g1"):
            members = [{"entity": {"reference": f"Patient/{p}"}} for p in self.group]
            group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True, "member": members}
            return httpx.Response(200, json=group)
        if not path.endswith("/ServiceRequest"):
            return httpx.Response(404, json=_outcome("not found"))
        if "patient" not in params and "_id" not in params:
            return httpx.Response(400, json=_outcome("ServiceRequest search requires patient or _id"))
        subject = f"Patient/{params['patient']}"
        found = [r for r in self.referrals.values() if r["subject"]["reference"] == subject]
        for value in params.get_list("_lastUpdated"):
            prefix = value[:2]
            if prefix not in self.rules.prefixes or "T" not in value:
                return httpx.Response(
                    400, json=_outcome(f"_lastUpdated takes {self.rules.prefixes} with a time")
                )
            bound = datetime.fromisoformat(value[2:].replace("Z", "+00:00"))
            if prefix in ("ge", "gt"):
                found = [r for r in found if _updated(r) > bound or (prefix == "ge" and _updated(r) == bound)]
            else:
                found = [r for r in found if _updated(r) <= bound]
        count = int(params.get("_count", "50"))
        if self.rules.max_count is not None and count > self.rules.max_count:
            return httpx.Response(400, json=_outcome("asked for more than the server clamps to"))
        entries = [{"fullUrl": f"{self.base}/ServiceRequest/{r['id']}", "resource": r} for r in found]
        bundle = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(entries),
            "meta": {"lastUpdated": "2026-12-01T00:00:00Z"},
            "entry": entries,  # every match on one page, and no next link
        }
        return httpx.Response(200, json=bundle)


def _updated(resource: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(resource["meta"]["lastUpdated"].replace("Z", "+00:00"))


def test_group_members_are_its_active_patients() -> None:
    group = {
        "member": [
            {"entity": {"reference": "Patient/a"}},
            {"entity": {"reference": "Patient/b"}, "inactive": True},
            {"entity": {"reference": "Practitioner/c"}},
            {"entity": {"reference": "Patient/d"}},
        ]
    }
    assert group_members(group) == ["a", "d"]


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_a_per_patient_crawl_loads_everything_then_exactly_what_changed(tmp_path: Path, vendor: str) -> None:
    rules = VENDORS[vendor]
    base = f"https://{vendor}.test/fhir"
    patients = [f"p{i}" for i in range(1, 21)]
    server = VendorSimulator(base, rules, patients)
    n = 0
    for i, patient in enumerate(patients):
        for _ in range(3):
            n += 1
            server.referrals[f"sr{n}"] = referral(n, patient, T0 + timedelta(hours=i))
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "{vendor}"\nbase_url = "{base}"\nresources = ["ServiceRequest"]\n'
        f'profile = "{vendor}"\npatient_group_id = "g1"\nbulk = "never"\npage_size = 500\n'
        + ('practice_id = "195900"\n' if rules.practice else "")
    )

    def sync() -> dict[str, Any]:
        with respx.mock(assert_all_called=False) as mock:
            mock.route(host="127.0.0.1").pass_through()
            mock.route(host=f"{vendor}.test").mock(side_effect=server)
            result = runner.invoke(app, ["sync", "--config", str(config), "--json"])
        assert result.exit_code == 0, result.output
        (row,) = orjson.loads(result.stdout)["streams"]
        return row

    first = sync()
    assert (first["fetched"], first["loaded"], first["rejected"]) == (60, 60, 0)
    assert [status for status, _ in server.log if status >= 400] == []
    searches = [url for _, url in server.log if url.path.endswith("/ServiceRequest")]
    assert sorted(url.params["patient"] for url in searches) == sorted(patients)
    assert all("_lastUpdated" not in url.params for url in searches)  # new patients: in full

    # 5 referrals change, 5 new arrive, and a new patient joins the group with 2 referrals updated long ago.
    later = T0 + timedelta(days=30)
    for k in range(1, 6):
        server.referrals[f"sr{k}"] = referral(
            k, server.referrals[f"sr{k}"]["subject"]["reference"][8:], later, status="completed"
        )
    for k in range(61, 66):
        server.referrals[f"sr{k}"] = referral(k, "p7", later)
    server.group.append("p21")
    for k in (66, 67):
        server.referrals[f"sr{k}"] = referral(k, "p21", T0 - timedelta(days=60))
    server.log.clear()

    second = sync()
    assert second["loaded"] == 12  # 5 changed + 5 new + the new patient's 2
    assert [status for status, _ in server.log if status >= 400] == []
    by_patient = {url.params["patient"]: url for _, url in server.log if url.path.endswith("/ServiceRequest")}
    assert "_lastUpdated" not in by_patient["p21"].params  # new in the group: in full
    if rules.prefixes:
        # From the watermark (the newest seen, p20's at T0 + 19 h) less the 60 s overlap; `gt` where taken.
        prefix = "gt" if "gt" in rules.prefixes else "ge"
        assert by_patient["p1"].params["_lastUpdated"] == f"{prefix}2026-10-01T18:59:00.000Z"
    else:
        # No _lastUpdated (Epic): every patient in full, the unchanged referrals skipped before mapping.
        assert "_lastUpdated" not in by_patient["p1"].params
        assert second["unchanged"] == 55
    if rules.practice:
        assert all(url.params["ah-practice"] == rules.practice for _, url in server.log)
        assert by_patient["p1"].params["_count"] == "100"  # page_size 500, clamped to what athena honours

    engine = sa.create_engine(f"sqlite:///{tmp_path}/wh.db")
    with engine.connect() as conn:
        statuses: dict[str, str] = dict(
            conn.execute(sa.text("SELECT resource_id, status FROM referral")).all()
        )
        crawled = conn.execute(sa.text("SELECT count(*) FROM patient_crawl")).scalar_one()
    engine.dispose()
    assert len(statuses) == 67
    assert [statuses[f"sr{k}"] for k in range(1, 6)] == ["completed"] * 5
    assert crawled == 21
