"""The `connector` command: what IT staff, schedulers and the demo run.

Every command exits 0 on success and non-zero with a one-line reason on failure; `--json` prints
machine-readable output. Nothing printed here contains resource content or secrets.
"""

from __future__ import annotations

import asyncio
import dataclasses
import difflib
import functools
import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from importlib import resources as package_files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar
from urllib.parse import urlsplit

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from sqlalchemy.exc import SQLAlchemyError

from connector import progress as progress_events
from connector.config import (
    EXAMPLE_CONFIG,
    SUPPORTED_RESOURCES,
    Settings,
    config_path,
    load_settings,
    quiet_third_party_logs,
)
from connector.errors import ConnectorError, MappingError

if TYPE_CHECKING:
    from prefect import State  # imported lazily at run time: Prefect takes a second to load

app = typer.Typer(
    name="connector",
    help="FHIR connector for therapy practices: sync referrals, eligibility, authorizations and denials.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        out.print(f"connector {version('therapy-fhir-connector')}", markup=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """FHIR connector for therapy practices: sync referrals, eligibility, authorizations and denials."""


deadletters_app = typer.Typer(help="Resources that failed validation or mapping.", no_args_is_help=True)
app.add_typer(deadletters_app, name="deadletters")

# Piped output (cron mail, CI logs) gets room for the tables instead of rich's 80 columns.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)
err = Console(stderr=True, highlight=False, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Config file (default: $CONNECTOR_CONFIG or ./connector.toml)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]

T = TypeVar("T")


def _fail(message: str, code: int = 1) -> typer.Exit:
    for line in str(message).splitlines() or ["failed"]:
        err.print(f"error: {line}", markup=False)
    return typer.Exit(code)


def _guard(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except (ConnectorError, MappingError) as exc:
        raise _fail(str(exc)) from None


def _print_json(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, default=str, option=orjson.OPT_INDENT_2).decode() + "\n")


# ---------------------------------------------------------------- progress display


class _RichSink:
    """Live progress bars per stream on a terminal."""

    def __init__(self, bar: Progress) -> None:
        self.bar = bar
        self.tasks: dict[tuple[str, str], Any] = {}

    def stream_started(self, endpoint: str, resource_type: str) -> None:
        key = (endpoint, resource_type)
        if key not in self.tasks:  # the windows of a backfill share one bar
            self.tasks[key] = self.bar.add_task(
                f"{endpoint} {resource_type}", total=None, fetched=0, rejected=0
            )

    def patients_done(self, endpoint: str, resource_type: str, done: int, total: int | None) -> None:
        task_id = self.tasks.get((endpoint, resource_type))
        if task_id is not None:
            of = total if total is not None else "?"
            self.bar.update(task_id, description=f"{endpoint} {resource_type} (patients {done}/{of})")

    def stream_total(self, endpoint: str, resource_type: str, total: int) -> None:
        task_id = self.tasks.get((endpoint, resource_type))
        if task_id is not None:
            known = self.bar.tasks[task_id].total
            self.bar.update(task_id, total=(known or 0) + total)  # each window's search counts its part

    def page_done(
        self, endpoint: str, resource_type: str, *, fetched: int, loaded: int, rejected: int
    ) -> None:
        task_id = self.tasks.get((endpoint, resource_type))
        if task_id is not None:
            task = self.bar.tasks[task_id]
            self.bar.update(
                task_id,
                advance=fetched,
                fetched=task.fields["fetched"] + fetched,
                rejected=task.fields["rejected"] + rejected,
            )

    def stream_finished(self, endpoint: str, resource_type: str, *, status: str) -> None:
        task_id = self.tasks.get((endpoint, resource_type))
        if task_id is not None:
            done = self.bar.tasks[task_id].completed
            self.bar.update(
                task_id,
                total=max(done, 1),
                completed=max(done, 1),
                description=f"{endpoint} {resource_type} [{status}]",
            )


class _LineSink:
    """Plain lines when the output is not a terminal (cron, CI, log files)."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.counts: dict[tuple[str, str], list[int]] = {}

    def stream_started(self, endpoint: str, resource_type: str) -> None:
        self.counts.setdefault((endpoint, resource_type), [0, 0, 0])

    def stream_total(self, endpoint: str, resource_type: str, total: int) -> None:
        self.console.print(f"{endpoint} {resource_type}: the server counts {total} to fetch", markup=False)

    def patients_done(self, endpoint: str, resource_type: str, done: int, total: int | None) -> None:
        # A line per tenth of the patients (and the last; every 1,000 when the total is not known).
        step = max(1, total // 10) if total else 1000
        if done == total or done % step == 0:
            of = total if total is not None else "?"
            self.console.print(f"{endpoint} {resource_type}: patients {done}/{of}", markup=False)

    def page_done(
        self, endpoint: str, resource_type: str, *, fetched: int, loaded: int, rejected: int
    ) -> None:
        c = self.counts.setdefault((endpoint, resource_type), [0, 0, 0])
        c[0] += fetched
        c[1] += loaded
        c[2] += rejected

    def stream_finished(self, endpoint: str, resource_type: str, *, status: str) -> None:
        fetched, loaded, rejected = self.counts.get((endpoint, resource_type), [0, 0, 0])
        self.console.print(
            f"{endpoint} {resource_type}: {status} (fetched {fetched}, loaded {loaded}, rejected {rejected})",
            markup=False,
        )


@contextmanager
def _progress(enabled: bool) -> Iterator[None]:
    if not enabled:
        yield
        return
    if err.is_terminal:
        bar = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[fetched]} fetched, {task.fields[rejected]} rejected"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=err,
            transient=False,
        )
        with bar:
            progress_events.set_sink(_RichSink(bar))
            try:
                yield
            finally:
                progress_events.set_sink(None)
    else:
        progress_events.set_sink(_LineSink(err))
        try:
            yield
        finally:
            progress_events.set_sink(None)


# ---------------------------------------------------------------- sync


@dataclass(frozen=True)
class SyncOutcome:
    #: The run's sync_run rows, one per stream.
    rows: list[dict[str, Any]]
    #: Per endpoint, the push-back items queued, sent and failed during the run.
    pushed: list[dict[str, Any]]
    #: Why the run failed, or None.
    reason: str | None
    seconds: float


def _run_sync(
    settings: Settings,
    *,
    endpoints: list[str],
    resources: list[str],
    full_refresh: bool,
    json_out: bool,
) -> SyncOutcome:
    """Run the sync flow in this process."""
    from prefect.exceptions import PrefectException

    from connector.gc_tuning import freeze_startup_objects
    from connector.prefect_api import PrefectApiError, prefect_api, shown_url
    from connector.warehouse import outbox, state
    from connector.warehouse.engine import make_engine
    from flows.sync import sync_all  # Prefect is imported only by the commands that run flows.

    # This process is about to sync: tune memory once, now that the heavy imports are done.
    freeze_startup_objects()

    assert settings.source_file is not None
    for name in endpoints:
        settings.endpoint(name)
    run_id = str(uuid.uuid4())
    started = time.monotonic()
    started_at = datetime.now(UTC)
    with (
        prefect_api(start_timeout=settings.runtime.prefect_start_timeout) as api_url,
        _progress(not json_out),
    ):
        try:
            # Prefect types a flow called with return_state=True as an Awaitable, not the coroutine it is.
            flow_state: State[Any] = asyncio.run(
                sync_all(  # type: ignore[arg-type]
                    str(settings.source_file),
                    endpoints or None,
                    resources or None,
                    full_refresh,
                    run_id,
                    return_state=True,
                )
            )
        except (httpx.HTTPError, PrefectException, RuntimeError) as failure:
            # Raised by Prefect's client, not by a stream (a stream's failure is the flow's Failed state).
            raise PrefectApiError(
                f"the Prefect API at {shown_url(api_url)} stopped answering during the run "
                f"({type(failure).__name__}); set PREFECT_API_URL to a running Prefect server"
            ) from None
    seconds = round(time.monotonic() - started, 3)
    reason = None
    if not flow_state.is_completed():
        exc = flow_state.result(raise_on_failure=False)
        reason = str(exc) if isinstance(exc, BaseException) else (flow_state.message or "sync failed")
    try:
        engine = make_engine(settings.warehouse.url)
        try:
            rows = state.runs_for(engine, run_id)
            pushed = outbox.activity_since(engine, started_at)
        finally:
            engine.dispose()
    except (ConnectorError, SQLAlchemyError):
        # The run never reached the warehouse (unreachable, not migrated): the reason says why.
        rows, pushed = [], []
    return SyncOutcome(rows, pushed, reason, seconds)


def _streams_seconds(rows: list[dict[str, Any]]) -> float | None:
    spans = [
        (r["started_at"], r["finished_at"]) for r in rows if r.get("started_at") and r.get("finished_at")
    ]
    if not spans:
        return None
    span: timedelta = max(end for _, end in spans) - min(start for start, _ in spans)
    return round(span.total_seconds(), 3)


def _receipt(row: dict[str, Any]) -> str:
    source, held = row.get("source_count"), row.get("warehouse_count")
    if source is None:
        return ""
    return f"{source} / {held}" + ("" if source == held else "  differs")


def _summary_table(rows: list[dict[str, Any]]) -> Table:
    """Per stream: fetched = loaded + unchanged + rejected; `included` (other types that came with it)
    and the receipt (the server's count / the warehouse's) only when there are some."""
    counts = ["fetched", "loaded", "unchanged", "rejected"]
    if any(row.get("included") for row in rows):
        counts.append("included")
    receipts = any(row.get("source_count") is not None for row in rows)
    table = Table(title="Sync summary", title_justify="left")
    for column in ("endpoint", "stream", "status", *counts):
        table.add_column(column, justify="right" if column in counts else "left")
    if receipts:
        table.add_column("server / warehouse", justify="right")
    for row in rows:
        cells = [
            row["endpoint"],
            row["resource_type"],
            row["status"],
            *(str(row.get(c) or 0) for c in counts),
        ]
        table.add_row(*cells, *([_receipt(row)] if receipts else []))
    return table


def _did_you_mean(word: str, choices: Sequence[str]) -> str:
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(word.lower(), list(lowered), n=1, cutoff=0.6)
    return f"; did you mean {lowered[close[0]]}?" if close else ""


def check_selection(settings: Settings, endpoints: Sequence[str], resources: Sequence[str]) -> str | None:
    """Why `--endpoint` / `--resource` select nothing they name (a typo, a type not configured), or None."""
    names = [e.name for e in settings.endpoints]
    for name in endpoints:
        if name not in names:
            return f"no endpoint named {name!r}{_did_you_mean(name, names)} (configured: {', '.join(names)})"
    chosen = [e for e in settings.endpoints if e.enabled and (not endpoints or e.name in endpoints)]
    for rtype in resources:
        if rtype not in SUPPORTED_RESOURCES:
            return f"unknown resource type {rtype!r}{_did_you_mean(rtype, SUPPORTED_RESOURCES)}"
        if not any(rtype in e.resources for e in chosen):
            where = ", ".join(e.name for e in chosen) or "no enabled endpoint"
            return f"{rtype} is not in the resources of {where}: add it to `resources` to sync it"
    return None


def _starting_line(settings: Settings, endpoints: Sequence[str]) -> str:
    """What a sync is about to read and write, before the seconds of start-up: hosts, never secrets."""
    import sqlalchemy as sa

    chosen = [e for e in settings.endpoints if e.enabled and (not endpoints or e.name in endpoints)]
    sources = ", ".join(
        f"{e.name} ({urlsplit(e.base_url).netloc if e.base_url else f'folder {e.ndjson_dir}'})"
        for e in chosen
    )
    warehouse = sa.make_url(settings.warehouse.url).render_as_string(hide_password=True)
    return f"Syncing {sources} into {warehouse} ..."


def _sync_command(
    settings: Settings, endpoints: list[str], resources: list[str], full_refresh: bool, json_out: bool
) -> list[dict[str, Any]]:
    mistake = check_selection(settings, endpoints, resources)
    if mistake is not None:
        raise _fail(mistake, code=2)
    if not json_out:
        err.print(_starting_line(settings, endpoints), markup=False)
    outcome = _guard(
        lambda: _run_sync(
            settings, endpoints=endpoints, resources=resources, full_refresh=full_refresh, json_out=json_out
        )
    )
    rows, reason = outcome.rows, outcome.reason
    if json_out:
        _print_json(
            {
                "streams": rows,
                "push": outcome.pushed,
                "status": "failed" if reason else "succeeded",
                "error": reason,
                # The flow's wall time (Prefect's start-up included), and the streams' own: from the first
                # stream's start to the last one's end.
                "seconds": outcome.seconds,
                "streams_seconds": _streams_seconds(rows),
            }
        )
    else:
        out.print(_summary_table(rows))
        for push in outcome.pushed:
            out.print(
                f"Push-back to {push['endpoint']}: {push['queued']} queued, {push['sent']} sent, "
                f"{push['failed']} failed",
                markup=False,
            )
    if reason:
        raise _fail(reason)
    return rows


@app.command()
def sync(
    config: ConfigOption = None,
    endpoint: Annotated[
        list[str] | None, typer.Option("--endpoint", "-e", help="Only this endpoint.")
    ] = None,
    resource: Annotated[
        list[str] | None, typer.Option("--resource", "-r", help="Only this resource type.")
    ] = None,
    full_refresh: Annotated[
        bool, typer.Option("--full-refresh", help="Ignore watermarks, fetch all.")
    ] = False,
    json_out: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Pull what changed since the last run from every enabled endpoint into the warehouse."""
    quiet_third_party_logs(verbose)
    settings = _guard(lambda: load_settings(config))
    _sync_command(settings, endpoint or [], resource or [], full_refresh, json_out)


DEMO_WAREHOUSE = "demo-warehouse.db"


def demo_config_path() -> Path:
    return Path(str(package_files.files("connector") / "demo" / "demo.toml"))


@app.command()
def demo(
    json_out: JsonOption = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show Prefect's logs.")] = False,
) -> None:
    """Sync the bundled sample data into ./demo-warehouse.db and print the summary and metrics."""
    from connector.warehouse import summary
    from connector.warehouse.engine import make_engine

    quiet_third_party_logs(verbose)
    settings = _guard(lambda: load_settings(demo_config_path()))
    rows = _sync_command(settings, [], [], False, json_out)
    engine = make_engine(settings.warehouse.url)
    try:
        metrics = summary.demo_metrics(engine)
        report_file = _guard(lambda: _demo_report(engine))
        # Fold the write-ahead log into the file, so demo-warehouse.db alone holds the data (a copy of it is
        # a complete warehouse) and no -wal / -shm files stay beside it.
        with engine.connect() as conn:
            conn.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        engine.dispose()
    if json_out:
        err.print(f"Report: {report_file}", markup=False)  # stdout stays pure JSON
        return
    out.print(summary.render(metrics))
    out.print(f"Warehouse: {Path(DEMO_WAREHOUSE).resolve()} ({sum(r['loaded'] for r in rows)} rows loaded)")
    out.print(f"Report: {report_file}", markup=False)


DEMO_REPORT = "demo-report.html"


def _demo_report(engine: Any) -> Path:
    """Write ./demo-report.html; its period is the demo data's weeks, not the weeks up to today, so the
    bundled (fixed-date) data set fills the charts as time goes by and every referral in it is counted."""
    from connector.report import activity_weeks, write_report

    weeks = activity_weeks(engine)
    if weeks is None:
        return write_report(engine, Path(DEMO_REPORT)).html
    as_of, period = weeks
    return write_report(engine, Path(DEMO_REPORT), period=period, as_of=as_of).html


@app.command()
def push(
    config: ConfigOption = None,
    endpoint: Annotated[
        list[str] | None, typer.Option("--endpoint", "-e", help="Only this endpoint.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show what would be sent; send nothing.")
    ] = False,
    show_phi: Annotated[
        bool,
        typer.Option("--show-phi", help="Show the words of case summaries in a dry run (masked by default)."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Deliver pending acknowledgments (Tasks), case summaries and metrics (MeasureReports) to the EMR."""
    from connector.pushback.run import push_round
    from connector.warehouse.engine import ensure_schema, make_engine

    quiet_third_party_logs(False)
    settings = _guard(lambda: load_settings(config))
    chosen = (
        [settings.endpoint(n) for n in endpoint] if endpoint else [e for e in settings.endpoints if e.pushes]
    )

    def _go() -> list[Any]:
        engine = make_engine(settings.warehouse.url)
        try:
            ensure_schema(engine)
            return [
                asyncio.run(push_round(settings, e, engine, dry_run=dry_run, show_phi=show_phi))
                for e in chosen
            ]
        finally:
            engine.dispose()

    summaries = _guard(_go)
    if json_out:
        _print_json([s.as_dict() for s in summaries])
    else:
        for s in summaries:
            where = s.target or "no FHIR server (NDJSON folder): nothing is sent"
            counts = ", ".join(
                f"{label} {_per_kind(group)}"
                for label, group in (
                    ("sent", s.sent),
                    ("waiting", s.waiting),
                    ("skipped", s.skipped),
                    ("failed", s.failed),
                )
            )
            out.print(f"{s.endpoint} -> {where}: {counts}", markup=False)
            if dry_run or s.target is None:
                for kind, key, _resource in s.previews[:20]:
                    out.print(f"  would send {kind} {key}", markup=False)
                if len(s.previews) > 20:
                    out.print(f"  ... and {len(s.previews) - 20} more (--json shows all)", markup=False)
            for error in s.errors[:10]:
                err.print(f"  {error}", markup=False)
    failed = sum(sum(s.failed.values()) for s in summaries)
    if failed:
        raise _fail(f"{failed} item(s) failed; `connector status` lists them")


# ---------------------------------------------------------------- setup and checks


@app.command()
def listen(
    config: ConfigOption = None,
    host: Annotated[
        str | None, typer.Option("--host", help="Address to bind (default: [listen] host).")
    ] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port to bind (default: [listen] port).")] = None,
    no_subscribe: Annotated[
        bool, typer.Option("--no-subscribe", help="Leave the servers' Subscriptions as they are.")
    ] = False,
) -> None:
    """Receive Subscription notifications and acknowledge new referrals within seconds."""
    import uvicorn

    from connector.subscriptions.app import create_app
    from connector.warehouse.engine import ensure_schema, make_engine

    quiet_third_party_logs(False)
    settings = _guard(lambda: load_settings(config))
    names = [e.name for e in settings.subscribed_endpoints()]
    if not names:
        raise _fail("no endpoint has `subscriptions = true`; see docs/subscriptions.md")
    if settings.listen.public_url is None and not no_subscribe:
        raise _fail("[listen] public_url is needed to subscribe: the URL the EMR reaches this listener at")
    engine = make_engine(settings.warehouse.url)
    _guard(lambda: ensure_schema(engine))
    bind_host, bind_port = host or settings.listen.host, port or settings.listen.port
    err.print(
        f"listening on http://{bind_host}:{bind_port}/notify/<endpoint> for {', '.join(names)}", markup=False
    )
    # No access log: a path may carry the endpoint's secret.
    uvicorn.run(
        create_app(
            settings,
            engine,
            subscribe=not no_subscribe,
            # On stdout, for a supervisor (or a test) that waits for the listener to be at work.
            on_ready=lambda: print("ready: subscriptions checked, streams caught up", flush=True),
        ),
        host=bind_host,
        port=bind_port,
        log_level="warning",
        access_log=False,
    )


@app.command()
def subscribe(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Create or update the Subscription of each subscribed stream and wait until the server activates it."""
    from connector.fhir.client import FhirClient
    from connector.subscriptions import manage
    from connector.warehouse.engine import ensure_schema, make_engine

    quiet_third_party_logs(False)
    settings = _guard(lambda: load_settings(config))
    chosen = settings.subscribed_endpoints()
    if not chosen:
        raise _fail("no endpoint has `subscriptions = true`; see docs/subscriptions.md")

    async def _go() -> list[manage.Subscribed]:
        engine = make_engine(settings.warehouse.url)
        try:
            ensure_schema(engine)
            done = []
            for endpoint in chosen:
                async with FhirClient(endpoint) as client:
                    for rtype in endpoint.subscription_resources:
                        done.append(await manage.ensure(client, engine, endpoint, settings.listen, rtype))
            return done
        finally:
            engine.dispose()

    subscribed = _guard(lambda: asyncio.run(_go()))
    if json_out:
        _print_json([dataclasses.asdict(s) for s in subscribed])
    else:
        for s in subscribed:
            why = f": {s.error}" if s.error else ""
            out.print(
                f"{s.resource_type}: Subscription/{s.server_id} ({s.style}) {s.status}{why}", markup=False
            )
    inactive = [s for s in subscribed if s.status != "active"]
    if inactive:
        raise _fail(f"{inactive[0].resource_type}: the Subscription is {inactive[0].status}")


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the example config.")] = Path("connector.toml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented example configuration to edit."""
    if path.exists() and not force:
        raise _fail(f"{path} exists; use --force to overwrite")
    # 0600 from the start: the file is where credentials (or references to them) go.
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(EXAMPLE_CONFIG)
        path.chmod(0o600)  # --force over an existing file keeps its mode otherwise
    except OSError as exc:
        raise _fail(f"cannot write {path}: {exc.strerror}") from None
    out.print(f"Wrote {path}. Edit it, then run: connector check --config {path}", markup=False)


@app.command()
def check(config: ConfigOption = None, json_out: JsonOption = False) -> None:
    """Prove each endpoint works: metadata, resource types, _lastUpdated support and auth."""
    from connector.checks import check_settings

    quiet_third_party_logs(False)
    settings = _guard(lambda: load_settings(config))
    reports = asyncio.run(check_settings(settings))
    if json_out:
        _print_json([r.as_dict() for r in reports])
    else:
        for report in reports:
            out.print(report.render())
    problems = [f"{r.endpoint}: {p}" for r in reports for p in r.problems]
    if problems:
        raise _fail(problems[0] + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))


@app.command()
def migrate(config: ConfigOption = None) -> None:
    """Create or upgrade the warehouse schema (Alembic)."""
    from connector.warehouse.engine import make_engine
    from connector.warehouse.engine import migrate as run_migrations

    settings = _guard(lambda: load_settings(config))

    def _go() -> str:
        engine = make_engine(settings.warehouse.url)
        try:
            return run_migrations(engine)
        finally:
            engine.dispose()

    revision = _guard(_go)
    out.print(f"Warehouse schema at revision {revision}.", markup=False)


@app.command()
def status(
    config: ConfigOption = None,
    json_out: JsonOption = False,
    limit: Annotated[int, typer.Option(help="How many recent stream runs to show.")] = 20,
) -> None:
    """Show the last runs, the watermarks and the dead-letter counts."""
    from connector.checks import describe_export, export_view
    from connector.warehouse import bulk_state, outbox, state
    from connector.warehouse.engine import open_read_only

    settings = _guard(lambda: load_settings(config, secrets=False))

    def _read() -> dict[str, Any]:
        engine = open_read_only(settings.warehouse.url)
        try:
            exports = bulk_state.pending_exports(engine)
            return {
                "runs": state.recent_runs(engine, limit),
                "watermarks": state.watermarks(engine),
                "dead_letters": state.dead_letter_counts(engine),
                "outbox": outbox.counts(engine),
                "bulk_exports": [{"endpoint": name} | export_view(e) for name, e in exports.items()],
                "receipts_disagreeing": state.receipts_disagreeing(engine),
                "subscriptions": subscription_health(settings, engine),
            }
        finally:
            engine.dispose()

    data = _guard(_read)
    if json_out:
        _print_json(data)
        return
    runs = Table(title="Recent runs", title_justify="left")
    for col in (
        "started",
        "endpoint",
        "stream",
        "status",
        "fetched",
        "loaded",
        "unchanged",
        "rejected",
        "error",
    ):
        runs.add_column(col)
    for r in data["runs"]:
        runs.add_row(
            _when(r["started_at"]),
            r["endpoint"],
            r["resource_type"],
            r["status"],
            str(r["fetched"]),
            str(r["loaded"]),
            str(r["unchanged"]),
            str(r["rejected"]),
            (r["error"] or "")[:80],
        )
    marks = Table(title="Watermarks (server time)", title_justify="left")
    for col in ("endpoint", "stream", "mode", "watermark", "updated"):
        marks.add_column(col)
    for w in data["watermarks"]:
        marks.add_row(
            w["endpoint"], w["resource_type"], w["mode"] or "", w["watermark"] or "", _when(w["updated_at"])
        )
    dead = Table(title="Open dead letters", title_justify="left")
    for col in ("endpoint", "stream", "open"):
        dead.add_column(col)
    for d in data["dead_letters"]:
        dead.add_row(d["endpoint"], d["resource_type"], str(d["open"]))
    pushes = Table(title="Push-back outbox", title_justify="left")
    for col in ("endpoint", "kind", "status", "items"):
        pushes.add_column(col)
    for o in data["outbox"]:
        pushes.add_row(o["endpoint"], o["kind"], o["status"], str(o["items"]))
    exports = Table(title="Bulk exports in progress", title_justify="left")
    for col in ("endpoint", "export"):
        exports.add_column(col)
    for e in data["bulk_exports"]:
        exports.add_row(e["endpoint"], describe_export(e))
    receipts = Table(title="Counts that disagree (server vs warehouse, last receipt)", title_justify="left")
    for col in ("endpoint", "stream", "run", "server", "warehouse"):
        receipts.add_column(col)
    for r in data["receipts_disagreeing"]:
        receipts.add_row(
            r["endpoint"],
            r["resource_type"],
            _when(r["started_at"]),
            str(r["source_count"]),
            str(r["warehouse_count"]),
        )
    subs = Table(title="Subscriptions (push-based intake)", title_justify="left")
    for col in (
        "endpoint",
        "stream",
        "style",
        "status",
        "healthy",
        "last event",
        "notified → Task p50 / p95",
    ):
        subs.add_column(col)
    for h in data["subscriptions"]:
        latency = f"{h['p50_seconds']:.1f} / {h['p95_seconds']:.1f} s" if h["p50_seconds"] is not None else ""
        subs.add_row(
            h["endpoint"],
            h["resource_type"],
            h["style"],
            h["status"] or "",
            "yes" if h["healthy"] else f"no: {h['why']}",
            _when(h["last_notified_at"]),
            latency,
        )
    out.print(runs, marks, dead, pushes, exports, receipts, *([subs] if data["subscriptions"] else []))


def subscription_health(settings: Any, engine: Any) -> list[dict[str, Any]]:
    """Per subscription: its state, whether it is healthy (active, heartbeats on time) and the notified
    referrals' seconds to their Task (p50, p95)."""
    import sqlalchemy as sa

    from connector.subscriptions import manage, queue

    out: list[dict[str, Any]] = []
    if not sa.inspect(engine).has_table("subscription_state"):
        return out  # a warehouse from before push-based intake (status opens it read-only, unmigrated)
    heartbeats = {e.name: e.heartbeat_seconds for e in settings.endpoints}
    for row in queue.states(engine):
        why = manage.unhealthy_reason(row, heartbeats.get(row["endpoint"], 60))
        p50, p95 = queue.latency_figures(queue.latencies(engine, row["endpoint"]))
        out.append(
            {
                "endpoint": row["endpoint"],
                "resource_type": row["resource_type"],
                "style": row["style"],
                "status": row["status"],
                "healthy": why is None,
                "why": why,
                "last_notified_at": row["last_notified_at"],
                "caught_up_at": row["caught_up_at"],
                "catch_up_reason": row["catch_up_reason"],
                "p50_seconds": p50,
                "p95_seconds": p95,
            }
        )
    return out


def _per_kind(counts: dict[str, int]) -> str:
    """'0', or '12 (task-create 10, measure-report 2)'."""
    total = sum(counts.values())
    if not counts:
        return "0"
    return f"{total} (" + ", ".join(f"{kind} {n}" for kind, n in counts.items()) + ")"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ") if value else ""


@deadletters_app.command("list")
def deadletters_list(
    config: ConfigOption = None,
    endpoint: Annotated[str | None, typer.Option("--endpoint", "-e", help="Only this endpoint's.")] = None,
    include_resolved: Annotated[bool, typer.Option("--all", help="Include resolved ones.")] = False,
    limit: Annotated[int, typer.Option(help="Show at most this many.")] = 100,
    json_out: JsonOption = False,
) -> None:
    """List dead letters: which resource failed, why, how often."""
    from connector.warehouse import deadletter
    from connector.warehouse.engine import open_read_only

    settings = _guard(lambda: load_settings(config, secrets=False))

    def _read() -> list[dict[str, Any]]:
        engine = open_read_only(settings.warehouse.url)
        try:
            return deadletter.list_dead_letters(
                engine, endpoint=endpoint, include_resolved=include_resolved, limit=limit
            )
        finally:
            engine.dispose()

    rows = _guard(_read)
    if json_out:
        _print_json(rows)
        return
    table = Table(title=f"Dead letters ({len(rows)})", title_justify="left")
    for col in ("id", "endpoint", "stream", "resource", "attempts", "last seen", "error"):
        table.add_column(col)
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["endpoint"],
            r["resource_type"],
            r["resource_id"] or "",
            str(r["attempts"]),
            _when(r["last_seen_at"]),
            r["error"],
        )
    out.print(table)


@deadletters_app.command("replay")
def deadletters_replay(
    config: ConfigOption = None,
    endpoint: Annotated[
        str | None, typer.Option("--endpoint", "-e", help="Only this endpoint's dead letters.")
    ] = None,
    ids: Annotated[list[int] | None, typer.Option("--id", help="Only these dead-letter ids.")] = None,
    json_out: JsonOption = False,
) -> None:
    """Re-run validation and mapping on open dead letters (after a fix); resolved ones are loaded."""
    from connector.replay import replay_dead_letters
    from connector.warehouse.engine import ensure_schema, make_engine

    settings = _guard(lambda: load_settings(config))

    def _go() -> dict[str, int]:
        engine = make_engine(settings.warehouse.url)
        try:
            ensure_schema(engine)
            return replay_dead_letters(
                engine,
                endpoint=endpoint,
                ids=ids,
                batch_size=settings.warehouse.batch_size,
                options={e.name: e.mapping_options() for e in settings.endpoints},
            )
        finally:
            engine.dispose()

    counts = _guard(_go)
    if json_out:
        _print_json(counts)
    else:
        out.print(
            f"Replayed {counts['replayed']}: {counts['resolved']} resolved, "
            f"{counts['still_failing']} still failing.",
            markup=False,
        )


# ---------------------------------------------------------------- report


@app.command()
def report(
    config: ConfigOption = None,
    endpoint: Annotated[
        list[str] | None, typer.Option("--endpoint", "-e", help="Only this endpoint (repeatable).")
    ] = None,
    period: Annotated[
        str, typer.Option("--period", help="How far back: 12w (weeks), 90d, 6m or 1y, ending --as-of.")
    ] = "12w",
    as_of: Annotated[
        datetime | None,
        typer.Option("--as-of", formats=["%Y-%m-%d"], help="Last day of the period (default: today, UTC)."),
    ] = None,
    out_file: Annotated[Path, typer.Option("--out", "-o", help="The HTML file to write.")] = Path(
        "report.html"
    ),
    pdf: Annotated[
        bool, typer.Option("--pdf", help="Also print it to a PDF beside it (needs a headless Chromium).")
    ] = False,
) -> None:
    """Write the practice report: one HTML page of charts and tables (opens offline) from the warehouse."""
    from connector.report import write_report
    from connector.warehouse.engine import open_read_only

    settings = _guard(lambda: load_settings(config, secrets=False))
    for name in endpoint or []:
        _guard(functools.partial(settings.endpoint, name))

    def _go() -> Any:
        engine = open_read_only(settings.warehouse.url)
        try:
            return write_report(
                engine,
                out_file,
                period=period,
                as_of=as_of.date() if as_of else None,
                endpoints=endpoint or None,
                pdf=pdf,
            )
        finally:
            engine.dispose()

    files = _guard(_go)
    out.print(f"Report ({files.period.start} to {files.period.end}): {files.html}", markup=False)
    if files.pdf is not None:
        out.print(f"PDF: {files.pdf}", markup=False)


# ---------------------------------------------------------------- schedules and deployments


@app.command()
def serve(
    config: ConfigOption = None,
    limit: Annotated[
        int | None, typer.Option("--limit", help="Most flow runs at once on this machine.")
    ] = None,
) -> None:
    """Run every enabled endpoint on its `schedule` from this machine (one Prefect deployment each)."""
    quiet_third_party_logs(True)
    from prefect import serve as prefect_serve

    from flows.deployments import endpoint_deployments

    path = config_path(config)
    settings = _guard(lambda: load_settings(path))
    deployments = endpoint_deployments(settings, path)
    if not deployments:
        raise _fail("no enabled endpoint to serve")
    # Blocks until interrupted; schedules are paused on shutdown so no run piles up meanwhile.
    from connector.gc_tuning import freeze_startup_objects

    freeze_startup_objects()  # once for this long-lived process, after Prefect and the flows are loaded
    prefect_serve(*deployments, limit=limit, pause_on_shutdown=True)


@app.command()
def deploy(
    config: ConfigOption = None,
    work_pool: Annotated[
        str, typer.Option("--work-pool", "-p", help="The Prefect work pool whose workers run the syncs.")
    ] = "connector",
) -> None:
    """Register one deployment per enabled endpoint with a Prefect work pool (see prefect.yaml)."""
    quiet_third_party_logs(False)
    from prefect import deploy as prefect_deploy

    from flows.deployments import endpoint_deployments

    path = config_path(config)
    settings = _guard(lambda: load_settings(path))
    deployments = endpoint_deployments(settings, path, module_entrypoint=True)
    if not deployments:
        raise _fail("no enabled endpoint to deploy")
    try:
        # The workers have the connector installed (docker/Dockerfile): no image to build, no code to push.
        prefect_deploy(
            *deployments,
            work_pool_name=work_pool,
            build=False,
            push=False,
            print_next_steps_message=False,
            ignore_warnings=True,
        )
    except (ValueError, RuntimeError) as exc:
        raise _fail(f"deploy to work pool {work_pool!r} failed: {exc}") from None
    for endpoint, d in zip([e for e in settings.endpoints if e.enabled], deployments, strict=True):
        schedule = endpoint.schedule or "on demand"
        out.print(f"Deployed sync-endpoint/{d.name} to {work_pool} ({schedule})", markup=False)


def main() -> None:
    try:
        app()
    finally:
        from connector.gc_tuning import quick_exit_collection

        quick_exit_collection()


__all__ = ["app", "config_path", "main"]
