"""One incremental sync of one endpoint through the real code path, without Prefect (starts in ~1 s).

    python tests/reliability/sync_runner.py CONFIG [--stop-at HOOK:N]

Does what the `sync-stream` task does (capabilities → plan → watermark → FhirClient.search → run_stream).
`--stop-at` is a test seam that lives only here: at the N-th call of HOOK the process prints
`STOPPED HOOK N` on stdout and waits on stdin, so the test can SIGKILL it exactly there. Hooks:

- `upsert`: a batch of rows is about to be written, inside a page's open transaction (mid-batch);
- `watermark`: the last page's rows are written and its watermark is next, still uncommitted;
- `committed`: a page's transaction has just committed (between pages / before `sync_run` is closed).
"""

from __future__ import annotations

import asyncio
import sys
from datetime import UTC, datetime
from typing import Any

from connector.config import load_settings
from connector.fhir.client import FhirClient
from connector.streams import plan_stream, stream_for
from connector.sync.pipeline import StreamResult, run_stream
from connector.sync.windows import window_params
from connector.warehouse import state
from connector.warehouse.engine import ensure_schema, make_engine


async def sync_once(config_path: str, run_id: str = "run") -> StreamResult:
    settings = load_settings(config_path)
    endpoint = settings.endpoint("clinic")
    engine = make_engine(settings.warehouse.url)
    try:
        ensure_schema(engine)
        async with FhirClient(endpoint) as client:
            plan = plan_stream(endpoint, stream_for("ServiceRequest"), await client.capabilities())
            _, watermark_at = state.get_watermark(engine, endpoint.name, plan.resource_type)
            pages = client.search(plan.resource_type, window_params(plan, endpoint, None, watermark_at))
            return await run_stream(
                engine=engine,
                endpoint=endpoint,
                plan=plan,
                pages=pages,
                run_id=run_id,
                synced_at=datetime(2026, 12, 1, tzinfo=UTC),
                batch_size=settings.warehouse.batch_size,
            )
    finally:
        engine.dispose()


def _install_stop(hook: str, n: int) -> None:
    from connector.sync import pipeline
    from connector.warehouse import writer

    calls = {"count": 0}

    def stop_here() -> None:
        calls["count"] += 1
        if calls["count"] == n:
            print(f"STOPPED {hook} {n}", flush=True)
            sys.stdin.readline()  # the test kills us here
            raise SystemExit("the test did not kill the process")

    def wrap(owner: Any, name: str, before: bool) -> None:
        original = getattr(owner, name)

        def wrapped(*args: Any, **kwargs: Any) -> Any:
            if before:
                stop_here()
            result = original(*args, **kwargs)
            if not before:
                stop_here()
            return result

        setattr(owner, name, wrapped)

    if hook == "upsert":
        wrap(writer, "_upsert", before=True)
    elif hook == "watermark":
        wrap(writer, "_advance_watermark", before=True)
    elif hook == "committed":
        wrap(pipeline, "write_page", before=False)
    else:
        raise SystemExit(f"unknown hook {hook!r}")


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[1] == "--stop-at":
        hook, n = argv[2].split(":")
        _install_stop(hook, int(n))
    result = asyncio.run(sync_once(argv[0]))
    print(f"RESULT {result.status} loaded={result.loaded} error={result.error}", flush=True)
    return 0 if result.status == "succeeded" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
