"""Deployments: one per enabled endpoint, on the endpoint's cron `schedule`.

`connector serve` runs them in this process (flow.serve: no work pool, for single-machine installs);
`connector deploy` registers them with a work pool so that workers on other machines run them.
Parameters are the config path and the endpoint name only: settings and secrets are read by the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect.deployments.runner import RunnerDeployment
from prefect.types.entrypoint import EntrypointType

from connector.config import Settings
from flows.sync import sync_endpoint

#: Shared by every deployment, so the Prefect UI can filter the connector's runs.
TAGS = ["therapy-connector"]


def endpoint_deployments(
    settings: Settings, config_path: str | Path, *, module_entrypoint: bool = False
) -> list[RunnerDeployment]:
    """A deployment per enabled endpoint, named after it; endpoints without `schedule` run on demand."""
    path = str(Path(config_path).resolve())
    deployments: list[Any] = []
    for endpoint in settings.endpoints:
        if not endpoint.enabled:
            continue
        options: dict[str, Any] = {}
        if module_entrypoint:
            # Workers import `flows.sync` from the installed package instead of a copy of the source tree.
            options["entrypoint_type"] = EntrypointType.MODULE_PATH
        # `to_deployment` is sync-or-async by caller (Prefect's sync_compatible); called here, it is sync.
        deployments.append(
            sync_endpoint.to_deployment(
                name=endpoint.name,
                cron=endpoint.schedule,
                parameters={"config_path": path, "endpoint_name": endpoint.name, "scheduled": True},
                tags=[*TAGS, f"endpoint:{endpoint.name}"],
                description=f"Sync endpoint {endpoint.name} into the warehouse.",
                **options,
            )
        )
    return deployments
