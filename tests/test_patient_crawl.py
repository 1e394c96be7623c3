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
from sqlalchemy.engine import Engine
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
    per_patient: tuple[str, ...] = ("ServiceRequest", "Coverage", "Appointment")  # only with `patient`


VENDORS = {
    "oracle": Rules("Cerner Millennium", ("ge", "le")),
    "athena": Rules(
        "athenaNet",
        ("gt", "ge"),
        practice="Organization/a-1.Practice-195900",
        max_count=100,
        per_patient=("ServiceRequest",),
    ),
    "epic": Rules("Epic", ()),
}


class VendorSimulator:
    def __init__(self, base: str, rules: Rules, patients: list[str]) -> None:
        self.base, self.rules, self.group = base, rules, patients
        self.referrals: dict[str, dict[str, Any]] = {}
        self.coverages: dict[str, dict[str, Any]] = {}
        self.visits: dict[str, dict[str, Any]] = {}
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
                        {"type": "Coverage"},
                        {"type": "Appointment"},
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
        if path.endswith("/Group/g1/$export"):
            assert params["_type"] == "Patient"
            return httpx.Response(202, headers={"Content-Location": f"{self.base}/jobs/patients"})
        if path.endswith("/jobs/patients"):
            if request.method == "DELETE":
                return httpx.Response(202)
            manifest = {
                "transactionTime": "2026-12-01T00:00:00Z",
                "request": f"{self.base}/Group/g1/$export?_type=Patient",
                "requiresAccessToken": True,
                "output": [{"type": "Patient", "url": f"{self.base}/files/patients.ndjson"}],
                "error": [],
            }
            return httpx.Response(200, json=manifest)
        if path.endswith("/files/patients.ndjson"):
            lines = b"".join(orjson.dumps({"resourceType": "Patient", "id": p}) + b"\n" for p in self.group)
            return httpx.Response(200, content=lines)
        if path.endswith("/Group/g1"):
            members = [{"entity": {"reference": f"Patient/{p}"}} for p in self.group]
            group = {"resourceType": "Group", "id": "g1", "type": "person", "actual": True, "member": members}
            return httpx.Response(200, json=group)
        rtype = path.rsplit("/", 1)[-1]
        if rtype == "Patient":
            return self._patients(request)
        if rtype not in ("ServiceRequest", "Coverage", "Appointment"):
            return httpx.Response(404, json=_outcome("not found"))
        if rtype in self.rules.per_patient and "patient" not in params and "_id" not in params:
            return httpx.Response(400, json=_outcome(f"{rtype} search requires patient or _id"))
        pool = {"ServiceRequest": self.referrals, "Coverage": self.coverages, "Appointment": self.visits}[
            rtype
        ]
        found = list(pool.values())
        if "patient" in params:
            found = [r for r in found if _patient_of(r) == f"Patient/{params['patient']}"]
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
        offset = int(params.get("_getpagesoffset", "0"))
        page = found[offset : offset + count] if "patient" not in params else found  # one page per patient
        entries = [{"fullUrl": f"{self.base}/{rtype}/{r['id']}", "resource": r} for r in page]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "total": len(found),
            "meta": {"lastUpdated": "2026-12-01T00:00:00Z"},
            "entry": entries,
        }
        if "patient" not in params and offset + count < len(found):
            following = request.url.copy_merge_params({"_getpagesoffset": str(offset + count)})
            bundle["link"] = [{"relation": "next", "url": str(following)}]
        return httpx.Response(200, json=bundle)

    def _patients(self, request: httpx.Request) -> httpx.Response:
        """`Patient?general-practitioner=...`: the group's patients, 7 to a page."""
        params = request.url.params
        if params.get("general-practitioner") != "Organization/practice-1":
            return httpx.Response(400, json=_outcome("unsupported Patient search"))
        if params.get("_summary") == "count":
            return httpx.Response(
                200, json={"resourceType": "Bundle", "type": "searchset", "total": len(self.group)}
            )
        offset = int(params.get("_getpagesoffset", "0"))
        chunk = self.group[offset : offset + 7]
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "type": "searchset",
            "entry": [{"resource": {"resourceType": "Patient", "id": p}} for p in chunk],
        }
        if offset + 7 < len(self.group):
            following = request.url.copy_merge_params({"_getpagesoffset": str(offset + 7)})
            bundle["link"] = [{"relation": "next", "url": str(following)}]
        return httpx.Response(200, json=bundle)


def _patient_of(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Appointment":
        return str(resource["participant"][0]["actor"]["reference"])
    subject = resource.get("subject") or resource.get("beneficiary") or {}
    return str(subject.get("reference"))


def visit(n: int, patient: str, based_on: str) -> dict[str, Any]:
    return {
        "resourceType": "Appointment",
        "id": f"appt{n}",
        "meta": {"lastUpdated": "2026-09-20T00:00:00Z"},
        "status": "booked",
        "start": "2026-10-20T15:00:00Z",
        "end": "2026-10-20T16:00:00Z",
        "basedOn": [{"reference": f"ServiceRequest/{based_on}"}],
        "participant": [{"actor": {"reference": f"Patient/{patient}"}, "status": "accepted"}],
    }


def coverage(n: int, patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Coverage",
        "id": f"cov{n}",
        "meta": {"lastUpdated": "2026-09-15T00:00:00Z"},
        "status": "active",
        "beneficiary": {"reference": f"Patient/{patient}"},
        "payor": [{"reference": "Organization/payer-1"}],
    }


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
    patients = [f"p{i}" for i in range(1, 201)]  # a practice of 200 patients, 600 referrals
    server = VendorSimulator(base, rules, patients)
    n = 0
    for i, patient in enumerate(patients):
        server.coverages[f"cov{i}"] = coverage(i, patient)
        for _ in range(3):
            n += 1
            server.referrals[f"sr{n}"] = referral(n, patient, T0 + timedelta(hours=i))
        server.visits[f"appt{i}"] = visit(i, patient, f"sr{n}")
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "{vendor}"\nbase_url = "{base}"\n'
        'resources = ["ServiceRequest", "Coverage", "Appointment"]\n'
        f'profile = "{vendor}"\npatient_group_id = "g1"\nbulk = "never"\npage_size = 500\n'
        + ('practice_id = "195900"\n' if rules.practice else "")
    )

    def sync() -> dict[str, Any]:
        with respx.mock(assert_all_called=False) as mock:
            mock.route(host="127.0.0.1").pass_through()
            mock.route(host=f"{vendor}.test").mock(side_effect=server)
            result = runner.invoke(app, ["sync", "--config", str(config), "--json"])
        assert result.exit_code == 0, result.output
        rows = {r["resource_type"]: r for r in orjson.loads(result.stdout)["streams"]}
        assert rows["Coverage"]["status"] == rows["Appointment"]["status"] == "succeeded"
        return rows["ServiceRequest"]

    first = sync()
    assert (first["fetched"], first["loaded"], first["rejected"]) == (600, 600, 0)
    assert [status for status, _ in server.log if status >= 400] == []
    searches = [url for _, url in server.log if url.path.endswith("/ServiceRequest")]
    assert sorted(url.params["patient"] for url in searches) == sorted(patients)
    assert all("_lastUpdated" not in url.params for url in searches)  # new patients: in full

    # 10 referrals change, 10 new arrive, and a new patient joins the group with 2 referrals updated long ago.
    later = T0 + timedelta(days=30)
    for k in range(1, 11):
        server.referrals[f"sr{k}"] = referral(
            k, server.referrals[f"sr{k}"]["subject"]["reference"][8:], later, status="completed"
        )
    for k in range(601, 611):
        server.referrals[f"sr{k}"] = referral(k, "p7", later)
    server.group.append("p201")
    for k in (611, 612):
        server.referrals[f"sr{k}"] = referral(k, "p201", T0 - timedelta(days=60))
    server.log.clear()

    second = sync()
    assert second["loaded"] == 22  # 10 changed + 10 new + the new patient's 2
    assert [status for status, _ in server.log if status >= 400] == []
    by_patient = {url.params["patient"]: url for _, url in server.log if url.path.endswith("/ServiceRequest")}
    assert "_lastUpdated" not in by_patient["p201"].params  # new in the group: in full
    if rules.prefixes:
        # From the watermark (the newest seen, p200's at T0 + 199 h) less the 60 s overlap; `gt` if taken.
        prefix = "gt" if "gt" in rules.prefixes else "ge"
        assert by_patient["p1"].params["_lastUpdated"] == f"{prefix}2026-10-09T06:59:00.000Z"
    else:
        # No _lastUpdated (Epic): every patient in full, the unchanged referrals skipped before mapping.
        assert "_lastUpdated" not in by_patient["p1"].params
        assert second["unchanged"] == 590  # 612 fetched, 22 loaded
    if rules.practice:
        assert all(url.params["ah-practice"] == rules.practice for _, url in server.log)
        assert by_patient["p1"].params["_count"] == "100"  # page_size 500, clamped to what athena honours

    engine = sa.create_engine(f"sqlite:///{tmp_path}/wh.db")
    with engine.connect() as conn:
        statuses: dict[str, str] = dict(
            conn.execute(sa.text("SELECT resource_id, status FROM referral")).all()
        )
        crawled = conn.execute(sa.text("SELECT count(*) FROM patient_crawl")).scalar_one()
        coverages = conn.execute(sa.text("SELECT count(*) FROM eligibility")).scalar_one()
        visits = conn.execute(
            sa.text("SELECT count(*) FROM visit WHERE referral_ref IS NOT NULL")
        ).scalar_one()
    engine.dispose()
    assert len(statuses) == 612
    assert [statuses[f"sr{k}"] for k in range(1, 11)] == ["completed"] * 10
    assert coverages == 200
    assert visits == 200  # each linked to its referral
    # Per-patient streams: each patient once per stream.
    assert crawled == 201 * len(rules.per_patient)


@pytest.mark.parametrize("vendor", list(VENDORS))
def test_check_on_each_simulator_names_its_profile(tmp_path: Path, vendor: str) -> None:
    rules = VENDORS[vendor]
    base = f"https://{vendor}.test/fhir"
    server = VendorSimulator(base, rules, ["p1"])
    config = tmp_path / "connector.toml"
    practice = 'practice_id = "195900"\n' if rules.practice else ""
    # Configured as a generic server: check says which profile fits, and why.
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        f'[[endpoints]]\nname = "{vendor}"\nbase_url = "{base}"\nresources = ["ServiceRequest", "Coverage"]\n'
        f'bulk = "never"\n{practice}'
    )
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host=f"{vendor}.test").mock(side_effect=server)
        result = runner.invoke(app, ["check", "--config", str(config), "--json"])
    (report,) = orjson.loads(result.stdout)
    assert result.exit_code == 1
    if rules.practice:  # without the profile no ah-practice is sent: athena refuses even /metadata
        assert "The ah-practice parameter is required" in " ".join(report["problems"])
    else:
        assert report["profile_fit"] == vendor
        assert f'set profile = "{vendor}"' in " ".join(report["problems"])
    # Configured right, with where the patients come from: nothing left to fix.
    config.write_text(config.read_text() + f'profile = "{vendor}"\npatient_group_id = "g1"\n')
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host=f"{vendor}.test").mock(side_effect=server)
        result = runner.invoke(app, ["check", "--config", str(config), "--json"])
    (report,) = orjson.loads(result.stdout)
    assert report["problems"] == []
    assert result.exit_code == 0
    assert report["profile_fit"] == vendor
    assert any("crawled per patient, the members of Group/g1" in note for note in report["notes"])


@pytest.mark.parametrize("source", ["group", "export", "search", "file"])
def test_the_patients_come_from_a_group_a_patient_search_or_a_file(tmp_path: Path, source: str) -> None:
    patients = [f"p{i}" for i in range(1, 31)]
    server = VendorSimulator("https://oracle.test/fhir", VENDORS["oracle"], patients)
    for i, patient in enumerate(patients):
        for k in range(3):  # three to a page of `_count=2`: Oracle's one page is larger than asked
            server.referrals[f"sr{i}-{k}"] = referral(i * 3 + k, patient, T0)
    (tmp_path / "patients.txt").write_text(
        "# the practice's patients\n"
        + "\n".join(f"Patient/{p}" if i % 2 else p for i, p in enumerate(patients))
    )
    where = {
        "group": 'patient_group_id = "g1"',
        "export": 'patient_group_id = "g1"\npatient_group_export = true',
        "search": 'patient_search = "general-practitioner=Organization/practice-1"',
        "file": 'patient_list_file = "patients.txt"',
    }[source]
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        '[[endpoints]]\nname = "oracle"\nbase_url = "https://oracle.test/fhir"\n'
        'resources = ["ServiceRequest"]\n'
        f'profile = "oracle"\nbulk = "never"\npage_size = 2\n{where}\n'
    )
    with respx.mock(assert_all_called=False) as mock:
        mock.route(host="127.0.0.1").pass_through()
        mock.route(host="oracle.test").mock(side_effect=server)
        result = runner.invoke(app, ["sync", "--config", str(config)])
    assert result.exit_code == 0, result.output
    # The progress line (an export's count is known once its files are read: the last line says it).
    assert "oracle ServiceRequest: patients 30/30" in result.stderr
    searched = sorted(url.params["patient"] for _, url in server.log if url.path.endswith("/ServiceRequest"))
    assert searched == sorted(patients)
    (row,) = [r for r in _rows(tmp_path) if r[0] == "ServiceRequest"]
    assert row[1] == 90  # every referral of every patient
    assert [status for status, _ in server.log if status >= 400] == []


def _rows(tmp_path: Path) -> list[tuple[str, int]]:
    engine = sa.create_engine(f"sqlite:///{tmp_path}/wh.db")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT resource_type, count(*) FROM raw_resource GROUP BY resource_type")
        )
        found = [(str(t), int(c)) for t, c in rows]
    engine.dispose()
    return found


def test_a_crawl_that_fails_leaves_its_patients_to_be_searched_in_full_again(tmp_path: Path) -> None:
    patients = [f"p{i}" for i in range(1, 9)]
    server = VendorSimulator("https://oracle.test/fhir", VENDORS["oracle"], patients)
    for i, patient in enumerate(patients):
        server.referrals[f"sr{i}"] = referral(i, patient, T0 + timedelta(hours=i))
    config = tmp_path / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "sqlite:///{tmp_path}/wh.db"\n'
        '[[endpoints]]\nname = "oracle"\nbase_url = "https://oracle.test/fhir"\n'
        'resources = ["ServiceRequest"]\nprofile = "oracle"\nbulk = "never"\npatient_group_id = "g1"\n'
        "max_connections = 1\n"
    )
    broken = {"p5"}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.params.get("patient") in broken:
            return httpx.Response(403, json=_outcome("not allowed today"))  # fatal: no task retry
        return server(request)

    def sync() -> int:
        with respx.mock(assert_all_called=False) as mock:
            mock.route(host="127.0.0.1").pass_through()
            mock.route(host="oracle.test").mock(side_effect=answer)
            return runner.invoke(app, ["sync", "--config", str(config)]).exit_code

    def crawl_rows() -> list[tuple[str, str | None]]:
        engine = sa.create_engine(f"sqlite:///{tmp_path}/wh.db")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT patient_id, pending_run FROM patient_crawl ORDER BY patient_id")
            )
            found = [(str(p), r) for p, r in rows]
        engine.dispose()
        return found

    assert sync() == 1  # p5's search fails: the stream fails, its watermark does not move
    # No patient counts as crawled after a failed run (written down as pending at most).
    assert all(run is not None for _, run in crawl_rows())
    broken.clear()
    server.log.clear()
    assert sync() == 0
    searches = [url for _, url in server.log if url.path.endswith("/ServiceRequest")]
    assert sorted(url.params["patient"] for url in searches) == patients
    assert all("_lastUpdated" not in url.params for url in searches)  # pending is not crawled: in full
    assert crawl_rows() == [(p, None) for p in patients]


def test_patients_count_as_crawled_only_once_the_run_that_searched_them_succeeds(engine: Engine) -> None:
    from connector.sync.crawl import confirm_run, known_patients, record_pending

    def known() -> set[str]:
        return known_patients(engine, "emr", "ServiceRequest", ["p1", "p2", "p3"])

    record_pending(engine, "emr", "ServiceRequest", "run-a", ["p1", "p2"])
    assert known() == set()  # run-a has not succeeded (it may still fail)
    assert confirm_run(engine, "emr", "ServiceRequest", "run-a") == 2
    assert known() == {"p1", "p2"}
    record_pending(engine, "emr", "ServiceRequest", "run-b", ["p2", "p3"])
    assert known() == {"p1", "p2"}  # a patient crawled in a complete run stays so
    record_pending(engine, "emr", "ServiceRequest", "run-c", ["p3"])  # run-b failed; run-c takes p3 over
    assert confirm_run(engine, "emr", "ServiceRequest", "run-b") == 0
    assert confirm_run(engine, "emr", "ServiceRequest", "run-c") == 1
    assert known() == {"p1", "p2", "p3"}
    assert known_patients(engine, "emr", "Coverage", ["p1"]) == set()  # per stream
