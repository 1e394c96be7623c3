"""docker/ and prefect.yaml: the compose stack, the image's entrypoint, work-pool deployments, the loader."""

from __future__ import annotations

import gzip
import inspect
import re
import sys
import tomllib
from pathlib import Path
from typing import Any

import httpx
import orjson
import respx
import yaml
from croniter import croniter

from connector.cli import app
from connector.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
DOCKER = ROOT / "docker"
sys.path.insert(0, str(DOCKER))
import load_sample_data  # noqa: E402


def compose() -> dict[str, Any]:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_has_the_development_stack() -> None:
    services = compose()["services"]
    assert set(services) == {"postgres", "prefect-server", "hapi", "loader", "migrate", "worker"}
    assert services["hapi"]["image"].startswith("hapiproject/hapi")
    assert services["postgres"]["image"].startswith("postgres:")
    # The worker serves the deployments, once the schema exists and the sample data is in HAPI.
    worker = services["worker"]
    assert worker["command"] == ["serve"]
    assert worker["environment"]["PREFECT_API_URL"] == "http://prefect-server:4200/api"
    assert worker["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert worker["depends_on"]["loader"]["condition"] == "service_completed_successfully"
    assert services["migrate"]["command"] == ["migrate"]
    for name in ("worker", "migrate", "loader", "prefect-server"):
        assert services[name]["build"]["dockerfile"] == "docker/Dockerfile"
    loader = services["loader"]
    assert loader["command"][0] == "http://hapi:8080/fhir"
    assert loader["entrypoint"][-1] == "/app/docker/load_sample_data.py"


def test_compose_config_is_valid_and_points_at_the_compose_services() -> None:
    services = compose()["services"]
    mount = services["worker"]["volumes"][0]
    source, target = mount.split(":")[:2]
    assert target == services["worker"]["environment"]["CONNECTOR_CONFIG"]
    settings = load_settings(DOCKER / source)
    assert "@postgres:5432/" in settings.warehouse.url
    (endpoint,) = settings.endpoints
    assert endpoint.base_url == "http://hapi:8080/fhir"
    assert endpoint.schedule is not None


def _dockerfile() -> str:
    return (DOCKER / "Dockerfile").read_text()


def test_image_entrypoint_is_the_cli_and_runs_as_a_user() -> None:
    text = _dockerfile()
    entry = re.search(r"^ENTRYPOINT (\[.*\])$", text, re.M)
    assert entry is not None
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert orjson.loads(entry.group(1)) == ["connector"]
    assert scripts["connector"] == "connector.cli:main"
    assert re.search(r"^FROM python:3\.\d+-slim", text, re.M)
    user = re.findall(r"^USER (\S+)$", text, re.M)
    assert user
    assert user[-1] != "root"
    # Everything the package needs is copied before it is installed; the compose commands exist.
    for folder in ("connector", "flows", "mappings"):
        assert f"COPY {folder} ./{folder}" in text
    commands = {c.name or (c.callback.__name__ if c.callback else "") for c in app.registered_commands}
    for service in compose()["services"].values():
        if service.get("image") == "therapy-connector:dev" and "entrypoint" not in service:
            assert service["command"][0] in commands


def test_prefect_yaml_deployments_run_the_flows() -> None:
    from prefect.flows import Flow, load_flow_from_entrypoint

    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    assert spec["build"] is None
    assert spec["push"] is None
    assert spec["deployments"]
    for deployment in spec["deployments"]:
        path, _, name = deployment["entrypoint"].partition(":")
        flow: Any = load_flow_from_entrypoint(str(ROOT / path) + ":" + name)
        assert isinstance(flow, Flow)
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(deployment["parameters"]) <= accepted
        assert "config_path" in deployment["parameters"]
        assert deployment["work_pool"]["name"] == "connector"
        for schedule in deployment["schedules"]:
            assert croniter.is_valid(schedule["cron"])


def test_loader_puts_the_sample_data_in_reference_order(tmp_path: Path) -> None:
    rows = {
        "ServiceRequest": [{"resourceType": "ServiceRequest", "id": "sr1"}],
        "Organization": [
            {"resourceType": "Organization", "id": "o1"},
            {"resourceType": "Organization", "id": "o2"},
        ],
    }
    for rt, items in rows.items():
        with gzip.open(tmp_path / f"{rt}.ndjson.gz", "wb") as fh:
            fh.write(b"\n".join(orjson.dumps(r) for r in items) + b"\n\n")
    posted: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        bundle = orjson.loads(request.content)
        posted.append(bundle)
        statuses = ["201 Created", "200 OK", "400 Bad Request"][: len(bundle["entry"])]
        return httpx.Response(200, json={"entry": [{"response": {"status": s}} for s in statuses]})

    base = "http://hapi.test/fhir"
    with respx.mock(assert_all_called=True) as mock:
        metadata = mock.get(f"{base}/metadata")
        metadata.side_effect = [httpx.ConnectError("starting"), httpx.Response(503), httpx.Response(200)]
        mock.post(base).mock(side_effect=answer)
        with httpx.Client() as client:
            counts = load_sample_data.load(base, tmp_path, client=client, sleep=lambda _s: None)
    assert metadata.call_count == 3
    assert counts == {"loaded": 2, "failed": 1}
    (bundle,) = posted
    assert bundle["type"] == "batch"
    assert [e["request"] for e in bundle["entry"]] == [
        {"method": "PUT", "url": "Organization/o1"},
        {"method": "PUT", "url": "Organization/o2"},
        {"method": "PUT", "url": "ServiceRequest/sr1"},
    ]


def test_loader_reads_the_bundled_demo_data() -> None:
    found = list(load_sample_data.resources(load_sample_data.DEFAULT_DATA))
    assert len(found) > 50
    assert all(isinstance(r.get("id"), str) and r.get("resourceType") for r in found)
    kinds = [r["resourceType"] for r in found]
    assert kinds.index("ServiceRequest") > kinds.index("Organization")
