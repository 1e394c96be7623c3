"""The connector's one typed settings object, read from a TOML file.

This is the only module that reads the process environment (`CONNECTOR_CONFIG`, and `env:NAME` secrets).
Secrets are `SecretStr`: they never appear in `repr`, logs or error messages.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import re
import stat
import tomllib
from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from croniter import croniter
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from connector.errors import ConfigError
from mappings.fhir_ids import ID_PATTERN
from mappings.specs import DEFAULT_TYPES, DIRECTORY_TYPES, SPECS, SYNCED_TYPES
from mappings.types import DEFAULT_INTAKE_ITEMS, MappingOptions
from mappings.vendors import PROFILE_NAMES, PROFILES, VendorProfile
from mappings.visit_links import DEFAULT_WINDOW_DAYS

CONFIG_ENV_VAR = "CONNECTOR_CONFIG"
DEFAULT_CONFIG_FILE = "connector.toml"

#: Resource types synced by default, directory types (referral sources: a server sends them with
#: `_include`, an NDJSON folder lists them as streams of their own) and every type `resources` may list, in
#: sync order: all from the resource specs.
DEFAULT_RESOURCES: tuple[str, ...] = DEFAULT_TYPES
DIRECTORY_RESOURCES: tuple[str, ...] = DIRECTORY_TYPES
SUPPORTED_RESOURCES: tuple[str, ...] = SYNCED_TYPES
DISCIPLINES: tuple[str, ...] = ("PT", "OT", "SLP", "other")

logger = logging.getLogger(__name__)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def warn_if_exposed(path: Path, what: str) -> None:
    """Log a warning when a file holding secrets can be read or written by group or others."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # reading it reports the problem
    if os.name != "nt" and mode & 0o077:
        logger.warning(
            "%s %s is accessible to group/others (mode %s); restrict it with `chmod 600 %s`",
            what,
            path,
            stat.filemode(mode),
            path,
        )


def resolve_secret(value: str, *, environ: dict[str, str] | None = None) -> str:
    """Resolve `env:NAME` and `file:/path` indirections; other values are taken literally."""
    env = os.environ if environ is None else environ
    if value.startswith("env:"):
        name = value[4:]
        if not name:
            raise ValueError("`env:` needs a variable name, e.g. env:EMR_CLIENT_SECRET")
        if name not in env:
            raise ValueError(f"environment variable {name} is not set")
        return env[name]
    if value.startswith("file:"):
        path = Path(value[5:]).expanduser()
        warn_if_exposed(path, "secret file")
        try:
            return path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"cannot read secret file {path}: {exc.strerror}") from None
    return value


def _secret_validator(value: Any) -> Any:
    if isinstance(value, str):
        return SecretStr(resolve_secret(value))
    return value


class AuthSettings(_Strict):
    """How the connector authenticates to one FHIR server."""

    type: Literal["none", "basic", "bearer", "smart-backend"] = "none"
    username: str | None = None
    password: SecretStr | None = None
    token: SecretStr | None = None
    client_id: str | None = None
    token_url: str | None = None
    private_key_file: Path | None = None
    private_key: SecretStr | None = None
    algorithm: Literal["RS384", "ES384"] = "RS384"
    #: The JWT header's `kid`; by default the key's RFC 7638 JWK thumbprint (what the server registers).
    key_id: str | None = None
    #: Scopes asked for; by default derived from the configured streams and what push-back sends here.
    scope: str | None = None
    #: SMART scope syntax of the derived scope: v1 (`system/Coverage.read`) or v2 (`system/Coverage.rs`).
    scope_version: Literal["v1", "v2"] = "v1"
    #: Refresh a cached token this many seconds before it expires.
    refresh_margin_seconds: int = Field(default=60, ge=0, le=3600)

    @field_validator("password", "token", "private_key", mode="before")
    @classmethod
    def _resolve_secret(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(info.context, dict) and info.context.get("secrets") is False:
            # A command that does not talk to the server (`status`, `report`) needs no secret.
            return SecretStr(value) if isinstance(value, str) else value
        return _secret_validator(value)

    @field_validator("private_key_file", mode="before")
    @classmethod
    def _key_file_indirection(cls, value: Any) -> Any:
        if isinstance(value, str) and value.startswith("file:"):
            return value[5:]
        return value

    @field_validator("token_url")
    @classmethod
    def _token_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_http_url(value)
        return value

    @model_validator(mode="after")
    def _required_per_type(self) -> AuthSettings:
        needed: dict[str, tuple[str, ...]] = {
            "basic": ("username", "password"),
            "bearer": ("token",),
            "smart-backend": ("client_id", "token_url"),
        }
        for key in needed.get(self.type, ()):
            if getattr(self, key) is None:
                raise ValueError(f"auth type {self.type!r} needs `{key}`")
        if self.type == "smart-backend" and self.private_key is None and self.private_key_file is None:
            raise ValueError("auth type 'smart-backend' needs `private_key_file` (or `private_key`)")
        return self

    def load_private_key(self) -> str:
        """The PEM text of the SMART client key; read when first needed, never logged."""
        if self.private_key is not None:
            return self.private_key.get_secret_value()
        if self.private_key_file is None:
            raise ConfigError("auth.private_key_file is not set")
        warn_if_exposed(self.private_key_file, "private key file")
        try:
            return self.private_key_file.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"auth.private_key_file: cannot read {self.private_key_file}: {exc.strerror}"
            ) from None


class TimeoutSettings(_Strict):
    connect: float = Field(default=10.0, gt=0)
    read: float = Field(default=60.0, gt=0)
    write: float = Field(default=30.0, gt=0)
    pool: float = Field(default=30.0, gt=0)


class RetrySettings(_Strict):
    """Retries of transient HTTP failures (connect/read errors, 408, 429, 5xx)."""

    max_attempts: int = Field(default=6, ge=1, le=50)
    #: Give up when the waits of one request would add up to more than this.
    max_total_wait_seconds: float = Field(default=300.0, ge=0)
    initial_backoff_seconds: float = Field(default=1.0, ge=0)
    max_backoff_seconds: float = Field(default=60.0, ge=0)
    #: A server's Retry-After is honoured up to this many seconds.
    retry_after_cap_seconds: float = Field(default=120.0, ge=0)


class VisitSettings(_Strict):
    """Which visits are evaluations where the shipped code map does not say (`[endpoints.visits]`)."""

    #: Codes of evaluation visits: "system|code", or a bare code of any system (e.g. a local "PTEVAL").
    evaluation_codes: list[str] = Field(default_factory=list)
    #: Words of a visit type's text or display that mean an evaluation (case-insensitive), e.g. "eval".
    evaluation_text: list[str] = Field(default_factory=list)
    #: After each sync, link visits that are not `basedOn` a referral (patient + discipline + window) and
    #: take a referral's first attended or booked visit within the window as its evaluation
    #: (`mappings.visit_links`); false keeps only what the codes say.
    infer_evaluations: bool = True
    #: Days after a referral within which its visits are linked to it and its evaluation is looked for.
    evaluation_window_days: int = Field(default=DEFAULT_WINDOW_DAYS, ge=1, le=730)

    @field_validator("evaluation_codes", "evaluation_text")
    @classmethod
    def _not_blank(cls, value: list[str]) -> list[str]:
        if any(not v.strip() for v in value):
            raise ValueError("entries must not be blank")
        return [v.strip() for v in value]


class MappingSettings(_Strict):
    """How this endpoint's resources are mapped (`[endpoints.mapping]`)."""

    #: "system|code" -> PT / OT / SLP / other, added to (or overriding) the shipped discipline code map.
    discipline_codes: dict[str, str] = Field(default_factory=dict)
    #: Intake items a referral needs to count as complete.
    intake_required: list[str] = Field(default_factory=lambda: list(DEFAULT_INTAKE_ITEMS))
    #: Store Coverage.subscriberId in clear text; by default only a hash is kept.
    keep_subscriber_id: bool = False

    @field_validator("discipline_codes")
    @classmethod
    def _codes(cls, value: dict[str, str]) -> dict[str, str]:
        for key, discipline in value.items():
            if "|" not in key:
                raise ValueError(
                    f"{key!r}: write codes as 'system|code', e.g. 'http://snomed.info/sct|91251008'"
                )
            if discipline not in DISCIPLINES:
                raise ValueError(f"{key!r}: discipline must be one of {', '.join(DISCIPLINES)}")
        return value

    @field_validator("intake_required")
    @classmethod
    def _items(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in DEFAULT_INTAKE_ITEMS]
        if unknown:
            raise ValueError(
                f"unknown intake item {', '.join(unknown)}; known: {', '.join(DEFAULT_INTAKE_ITEMS)}"
            )
        return list(dict.fromkeys(value))

    def options(self, validation: str = "strict") -> MappingOptions:
        return MappingOptions(
            discipline_codes=dict(self.discipline_codes),
            intake_required=tuple(self.intake_required),
            keep_subscriber_id=self.keep_subscriber_id,
            validation=validation,
        )


DEFAULT_IDENTIFIER_SYSTEM = "urn:therapy-fhir-connector:acknowledgment"
DEFAULT_MEASURE_BASE = "https://therapy-fhir-connector.org/fhir/Measure"
_REFERENCE_RE = re.compile(rf"^(Organization)/{ID_PATTERN}$")


class EndpointSettings(_Strict):
    """One FHIR server (or one folder of Bulk NDJSON files) to sync from."""

    name: str
    base_url: str | None = None
    ndjson_dir: Path | None = None
    enabled: bool = True
    resources: list[str] = Field(default_factory=lambda: list(DEFAULT_RESOURCES))
    schedule: str | None = None
    page_size: int = Field(default=200, ge=1, le=5000)
    #: Seconds subtracted from the watermark on each incremental search, so late commits are not missed.
    overlap_seconds: int = Field(default=60, ge=0)
    #: Search parameter per resource type used when the server does not support `_lastUpdated`.
    date_params: dict[str, str] = Field(default_factory=dict)
    #: `auto` asks the CapabilityStatement; `last-updated`, `date-param` or `full` force a mode.
    incremental: Literal["auto", "last-updated", "date-param", "full"] = "auto"
    verify_tls: bool = True
    #: strict: each resource is validated in full against the FHIR R4 models; mapped: only the elements
    #: the mappers read (plus resourceType, id and meta), several times faster. Either way an invalid
    #: resource goes to dead_letter.
    validation: Literal["strict", "mapped"] = "strict"
    max_connections: int = Field(default=4, ge=1, le=64)
    #: The EMR's search rules (`mappings/vendors.py`): generic, epic, oracle or athena.
    profile: str = "generic"
    #: athenahealth's practice id: every request then carries ah-practice=Organization/a-1.Practice-{id}.
    practice_id: str | None = Field(default=None, pattern=r"^[0-9A-Za-z][0-9A-Za-z.\-]{0,63}$")
    #: Streams the profile searches only per patient are crawled patient by patient: the patients are the
    #: members of this Group (default: `bulk_group_id`) ...
    patient_group_id: str | None = Field(default=None, pattern=rf"^{ID_PATTERN}$")
    #: Get the Group's patients by `Group/{id}/$export?_type=Patient` instead of reading the Group (for a
    #: group too big to read whole).
    patient_group_export: bool = False
    #: ... or the matches of this Patient search (a query string, e.g. `organization=Organization/o1`) ...
    patient_search: str | None = None
    #: ... or the ids in this file (one per line, `123` or `Patient/123`; relative to this file's folder).
    patient_list_file: Path | None = None
    timeouts: TimeoutSettings = Field(default_factory=TimeoutSettings)
    retry: RetrySettings = Field(default_factory=RetrySettings)
    auth: AuthSettings = Field(default_factory=AuthSettings)
    mapping: MappingSettings = Field(default_factory=MappingSettings)
    visits: VisitSettings = Field(default_factory=VisitSettings)
    #: Write a Task acknowledging each new active referral back to the EMR.
    push_acknowledgments: bool = False
    #: Write the practice's metrics as a MeasureReport per period.
    push_metrics: bool = False
    #: The practice, as the Organization that owns the Tasks and reports the metrics.
    owner: str | None = None
    #: System of the stable Task / MeasureReport identifiers.
    identifier_system: str = DEFAULT_IDENTIFIER_SYSTEM
    #: Write to another configured endpoint's server (references then become absolute).
    push_endpoint: str | None = None
    #: Referrals for other disciplines are acknowledged as `rejected` (statusReason says why).
    offered_disciplines: list[str] = Field(default_factory=lambda: list(DISCIPLINES))
    #: Acknowledge complete intakes as `accepted` instead of `received`.
    accept_complete_intake: bool = False
    #: Only referrals authored on or after this date are acknowledged (so a first sync of years of
    #: history does not send thousands of Tasks).
    acknowledge_since: str | None = None
    #: Canonical base of the Measure resources the MeasureReports point to.
    measure_base: str = DEFAULT_MEASURE_BASE
    #: week | month
    metrics_period: Literal["week", "month"] = "week"
    #: A push item is marked failed after this many attempts.
    push_max_attempts: int = Field(default=5, ge=1, le=100)
    #: Push-based intake (`connector listen`): the server notifies a Subscription of new referrals.
    subscriptions: bool = False
    #: The types subscribed to (each also a stream: a poll is the safety net).
    subscription_resources: list[str] = Field(default_factory=lambda: ["ServiceRequest"])
    #: The secret the server sends (`Authorization: Bearer …` via `channel.header`); env:NAME / file:PATH.
    subscription_secret: SecretStr | None = None
    #: Backport payload content: id-only (the connector fetches the focus), full-resource, or empty.
    subscription_payload: Literal["id-only", "full-resource", "empty"] = "id-only"
    #: A topic canonical (R4 Backport) per type; by default one the CapabilityStatement lists for the type,
    #: else a criteria-based Subscription.
    subscription_topics: dict[str, str] = Field(default_factory=dict)
    #: Seconds between heartbeats the server is asked for; three missed make the subscription unhealthy.
    heartbeat_seconds: int = Field(default=60, ge=5, le=3600)
    #: With `push_acknowledgments`: a case summary to the referrer after the evaluation, at each progress
    #: report and at discharge, as a Communication or a DocumentReference; never to another server.
    case_summary: Literal["communication", "document-reference", "off"] = "communication"
    #: Bulk Data $export for backfills: `auto` when the server offers it and a stream has no watermark.
    bulk: Literal["auto", "always", "never"] = "auto"
    #: system (`/$export`), group (`/Group/{bulk_group_id}/$export`) or patient (`/Patient/$export`).
    bulk_level: Literal["system", "group", "patient"] = "system"
    bulk_group_id: str | None = Field(default=None, pattern=rf"^{ID_PATTERN}$")
    #: A status poll waits at most this long, whatever the server's Retry-After says.
    bulk_poll_cap_seconds: float = Field(default=300.0, gt=0, le=86400)
    #: An export not complete this many hours after its kick-off is cancelled (DELETE).
    bulk_deadline_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    #: Export files downloaded (and loaded) at once.
    bulk_max_parallel_downloads: int = Field(default=2, ge=1, le=32)
    #: Other hosts that may serve export files (e.g. a storage bucket); they are never sent credentials.
    bulk_allowed_hosts: list[str] = Field(default_factory=list)

    @field_validator("owner")
    @classmethod
    def _owner(cls, value: str | None) -> str | None:
        if value is not None and not _REFERENCE_RE.match(value):
            raise ValueError("expected an Organization reference such as 'Organization/practice-1'")
        return value

    @field_validator("offered_disciplines")
    @classmethod
    def _disciplines(cls, value: list[str]) -> list[str]:
        unknown = [v for v in value if v not in DISCIPLINES]
        if unknown:
            raise ValueError(f"unknown discipline {', '.join(unknown)}; known: {', '.join(DISCIPLINES)}")
        return value

    @field_validator("acknowledge_since")
    @classmethod
    def _since(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                date.fromisoformat(value)
            except ValueError:
                raise ValueError(f"{value!r} is not a date such as 2026-11-01") from None
        return value

    @field_validator("measure_base")
    @classmethod
    def _measure_base(cls, value: str) -> str:
        _check_http_url(value)
        return value.rstrip("/")

    @property
    def pushes(self) -> bool:
        return self.push_acknowledgments or self.push_metrics

    def lists(self, resource_type: str) -> bool:
        """Whether the config names the type in `resources` (not only synced by default)."""
        return "resources" in self.model_fields_set and resource_type in self.resources

    @property
    def sends_summaries(self) -> bool:
        """Case summaries go out: with the acknowledgments, and only to the EMR the referral came from."""
        return self.push_acknowledgments and self.case_summary != "off" and self.push_endpoint is None

    @property
    def sends_communications(self) -> bool:
        return self.sends_summaries and self.case_summary == "communication"

    @property
    def sends_summary_documents(self) -> bool:
        return self.sends_summaries and self.case_summary == "document-reference"

    @field_validator("subscription_secret", mode="before")
    @classmethod
    def _subscription_secret(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(info.context, dict) and info.context.get("secrets") is False:
            return SecretStr(value) if isinstance(value, str) else value
        return _secret_validator(value)

    @model_validator(mode="after")
    def _subscriptions_need(self) -> EndpointSettings:
        if not self.subscriptions:
            return self
        if self.base_url is None:
            raise ValueError("`subscriptions` needs a FHIR server (`base_url`): a folder sends nothing")
        if self.subscription_secret is None:
            raise ValueError("`subscriptions` needs `subscription_secret` (e.g. env:EMR_HOOK_SECRET)")
        missing = [t for t in self.subscription_resources if t not in self.resources]
        if missing:
            raise ValueError(f"subscription_resources {', '.join(missing)} must be synced too (`resources`)")
        return self

    @model_validator(mode="after")
    def _summaries_stay_home(self) -> EndpointSettings:
        if (
            self.push_endpoint is not None
            and "case_summary" in self.model_fields_set
            and self.case_summary != "off"
        ):
            raise ValueError(
                "case summaries go only to the EMR the referral came from: with `push_endpoint` set, "
                'leave `case_summary` out or set it to "off"'
            )
        return self

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError("use letters, digits, '-', '_' or '.', at most 63 characters")
        return value

    @field_validator("base_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_http_url(value)
        return value.rstrip("/")

    @field_validator("ndjson_dir", "patient_list_file", mode="after")
    @classmethod
    def _relative_to_config(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        """A relative path is relative to the config file's folder."""
        if value is None:
            return None
        base = (info.context or {}).get("config_dir")
        if not value.is_absolute() and base is not None:
            value = Path(base) / value
        return value

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: list[str]) -> list[str]:
        unknown = [r for r in value if r not in SUPPORTED_RESOURCES]
        if unknown:
            raise ValueError(
                f"unsupported resource type {', '.join(unknown)}; supported: {', '.join(SUPPORTED_RESOURCES)}"
            )
        if not value:
            raise ValueError("list at least one resource type")
        return list(dict.fromkeys(value))

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str | None) -> str | None:
        if value is not None and not croniter.is_valid(value):
            raise ValueError(f"{value!r} is not a valid cron expression (e.g. '*/15 * * * *')")
        return value

    @field_validator("date_params")
    @classmethod
    def _date_params(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = [r for r in value if r not in SUPPORTED_RESOURCES]
        if unknown:
            raise ValueError(f"unsupported resource type {', '.join(unknown)}")
        return value

    @field_validator("profile")
    @classmethod
    def _profile(cls, value: str) -> str:
        if value not in PROFILES:
            close = difflib.get_close_matches(value.lower(), PROFILE_NAMES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown profile {value!r}{hint} (one of {', '.join(PROFILE_NAMES)})")
        return value

    @model_validator(mode="before")
    @classmethod
    def _profile_bulk_level(cls, data: Any) -> Any:
        """Epic refuses system-level exports: its `bulk_level` defaults to the Group export."""
        if isinstance(data, dict) and "bulk_level" not in data:
            vendor = PROFILES.get(str(data.get("profile", "generic")))
            if vendor is not None and "system" not in vendor.bulk_levels:
                return {**data, "bulk_level": vendor.bulk_levels[0]}
        return data

    @model_validator(mode="after")
    def _one_source(self) -> EndpointSettings:
        if (self.base_url is None) == (self.ndjson_dir is None):
            raise ValueError(
                "set exactly one of `base_url` (a FHIR server) or `ndjson_dir` (a folder of NDJSON)"
            )
        needs_practice = any("{practice_id}" in t for t in self.vendor.fixed_params.values())
        if needs_practice and self.practice_id is None:
            raise ValueError(
                f"profile {self.profile!r} needs `practice_id` (every request carries ah-practice)"
            )
        return self

    @property
    def is_server(self) -> bool:
        return self.base_url is not None

    @property
    def vendor(self) -> VendorProfile:
        """The search rules of this endpoint's EMR."""
        return PROFILES[self.profile]

    def search_count(self) -> int:
        """`_count` of a search page: `page_size`, within what the server honours."""
        cap = self.vendor.max_count
        return min(self.page_size, cap) if cap is not None else self.page_size

    def crawls_per_patient(self, resource_type: str) -> bool:
        """Whether the profile searches this type only per patient (`patient` among the parameters)."""
        return "patient" in self.vendor.needs(resource_type)

    @property
    def crawl_group_id(self) -> str | None:
        return self.patient_group_id or self.bulk_group_id

    def fixed_params(self) -> list[tuple[str, str]]:
        """Parameters the profile sends with every request (athenahealth's `ah-practice`)."""
        values = {"practice_id": self.practice_id or ""}
        return [(name, template.format(**values)) for name, template in self.vendor.fixed_params.items()]

    def mapping_options(self) -> MappingOptions:
        """What the mappers of this endpoint are told: its `[mapping]` and `[visits]` tables and its
        validation level."""
        return dataclasses.replace(
            self.mapping.options(self.validation),
            evaluation_codes=tuple(self.visits.evaluation_codes),
            evaluation_text=tuple(t.lower() for t in self.visits.evaluation_text),
        )


class WarehouseSettings(_Strict):
    url: str = "sqlite:///warehouse.db"
    #: Rows per INSERT .. ON CONFLICT statement.
    batch_size: int = Field(default=500, ge=1, le=10000)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        scheme = value.split(":", 1)[0]
        if "://" not in value or not scheme:
            raise ValueError("expected a SQLAlchemy URL such as sqlite:///warehouse.db")
        if not (scheme.startswith("sqlite") or scheme.startswith("postgresql")):
            raise ValueError("supported warehouses are sqlite:// and postgresql:// (postgresql+psycopg://)")
        return value


class RuntimeSettings(_Strict):
    """How flows execute (`[runtime]`): task runner, parallelism per endpoint, backfill windows."""

    #: threads (default: I/O-bound streams share one process), processes (CPU-bound validation and
    #: mapping across cores) or dask (prefect-dask; a cluster at `dask_address`, else a local one).
    task_runner: Literal["threads", "processes", "dask"] = "threads"
    #: tcp://scheduler:8786 of an existing Dask cluster; only with task_runner = "dask".
    dask_address: str | None = None
    #: Processes that validate and map pages (shared by the streams of a process); unset means one per
    #: core with the threads runner, 0 maps in the stream's own process.
    map_workers: int | None = Field(default=None, ge=0, le=64)
    #: Stream (or backfill window) tasks of one endpoint running at once: EMRs rate-limit per client.
    max_parallel_streams: int = Field(default=4, ge=1, le=64)
    #: Per-endpoint override of `max_parallel_streams`, by endpoint name.
    endpoint_parallel_streams: dict[str, Annotated[int, Field(ge=1, le=64)]] = Field(default_factory=dict)
    #: A first sync (or --full-refresh) of a server stream is split into this many `_lastUpdated`
    #: windows run in parallel; 1 turns windows off (e.g. for servers that page by offset).
    backfill_windows: int = Field(default=4, ge=1, le=256)
    #: Only split a stream the server reports at least this many resources for (`_summary=count`);
    #: when the server cannot count, the stream is split anyway.
    backfill_min_resources: int = Field(default=10_000, ge=0)
    #: Seconds a CLI run waits for the local Prefect server it starts (without PREFECT_API_URL) to answer;
    #: a loaded host needs far more than Prefect's own 20 s.
    prefect_start_timeout: float = Field(default=120.0, ge=5, le=3600)

    @field_validator("dask_address")
    @classmethod
    def _dask_address(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^(tcp|tls|ws|wss|inproc|ucx)://[^\s/]+", value):
            raise ValueError(f"{value!r} is not a Dask scheduler address such as tcp://scheduler:8786")
        return value

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RuntimeSettings:
        if self.dask_address is not None and self.task_runner != "dask":
            raise ValueError('`dask_address` is only used with task_runner = "dask"')
        return self

    def parallel_streams(self, endpoint: str) -> int:
        return self.endpoint_parallel_streams.get(endpoint, self.max_parallel_streams)

    def mapping_workers(self) -> int | None:
        """`map_workers`, or when unset: one per core (None) with threads, none under the process and
        Dask runners, whose tasks already run in processes of their own."""
        if self.map_workers is not None:
            return self.map_workers
        return None if self.task_runner == "threads" else 0


class ListenSettings(_Strict):
    """`connector listen` (`[listen]`): the web service receiving Subscription notifications."""

    host: str = "127.0.0.1"
    port: int = Field(default=8787, ge=1, le=65535)
    #: The URL the EMR reaches the listener at (the TLS proxy in front of it), without the path.
    public_url: str | None = None
    #: Bodies larger than this are refused (413) unread.
    max_body_bytes: int = Field(default=1_000_000, ge=1024, le=100_000_000)
    #: While subscriptions are healthy, `connector serve` polls their streams this often instead.
    healthy_poll_minutes: int = Field(default=60, ge=1, le=1440)
    #: Seconds between checks of the subscriptions (status, `$status` counts, heartbeats).
    check_seconds: float = Field(default=30.0, gt=0, le=3600)

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None:
            _check_http_url(value)
        return value.rstrip("/") if value else value


class Settings(_Strict):
    """Everything one run of the connector needs, built once and passed down."""

    warehouse: WarehouseSettings = Field(default_factory=WarehouseSettings)
    endpoints: Annotated[list[EndpointSettings], Field(min_length=1)]
    runtime: RuntimeSettings = Field(default_factory=RuntimeSettings)
    listen: ListenSettings = Field(default_factory=ListenSettings)
    source_file: Path | None = Field(default=None, exclude=True)

    @field_validator("endpoints")
    @classmethod
    def _unique_names(cls, value: list[EndpointSettings]) -> list[EndpointSettings]:
        seen: set[str] = set()
        for endpoint in value:
            if endpoint.name in seen:
                raise ValueError(f"endpoint name {endpoint.name!r} is used twice")
            seen.add(endpoint.name)
        for endpoint in value:
            target = endpoint.push_endpoint
            if target is not None and (target not in seen or not _server(value, target)):
                raise ValueError(
                    f"{endpoint.name}: push_endpoint {target!r} is not a configured FHIR server endpoint"
                )
        return value

    @model_validator(mode="after")
    def _derive_scopes(self) -> Settings:
        # The SMART scope follows the config: reads for the streams, writes only for what push-back sends
        # to this server. Servers refuse a whole token request for a scope the client was not granted.
        endpoints = []
        for endpoint in self.endpoints:
            if endpoint.auth.type == "smart-backend" and endpoint.auth.scope is None:
                senders = [e for e in self.endpoints if e.pushes and self.push_target(e) is endpoint]
                scope = requested_scope(endpoint, senders)
                endpoint = endpoint.model_copy(
                    update={"auth": endpoint.auth.model_copy(update={"scope": scope})}
                )
            endpoints.append(endpoint)
        object.__setattr__(self, "endpoints", endpoints)  # frozen model: replaced once, while validating
        return self

    def subscribed_endpoints(self) -> list[EndpointSettings]:
        """The enabled endpoints with `subscriptions = true`: what `connector listen` serves."""
        return [e for e in self.endpoints if e.subscriptions and e.enabled]

    def push_target(self, endpoint: EndpointSettings) -> EndpointSettings | None:
        """The server an endpoint's acknowledgments and metrics go to; None for a folder without one."""
        if endpoint.push_endpoint is not None:
            return self.endpoint(endpoint.push_endpoint)
        return endpoint if endpoint.is_server else None

    def endpoint(self, name: str) -> EndpointSettings:
        for endpoint in self.endpoints:
            if endpoint.name == name:
                return endpoint
        known = ", ".join(e.name for e in self.endpoints)
        raise ConfigError(f"no endpoint named {name!r} in {self.source_file}; configured: {known}")


def with_directory(resource_types: Sequence[str]) -> list[str]:
    """The types, plus the directory types (referral sources) when ServiceRequest is one of them: a search
    brings those with `_include`, and an export (which has no `_include`) must ask for them."""
    types = list(dict.fromkeys(resource_types))
    if "ServiceRequest" in types:
        types += [t for t in DIRECTORY_RESOURCES if t not in types]
    return types


#: Types push-back writes, per endpoint switch. It searches by identifier, creates and updates them.
PUSHED_TYPES: dict[str, tuple[str, ...]] = {
    switch: tuple(s.resource_type for s in SPECS if s.pushed_by == switch)
    for switch in dict.fromkeys(s.pushed_by for s in SPECS if s.pushed_by)
}


def requested_scope(endpoint: EndpointSettings, senders: Sequence[EndpointSettings]) -> str:
    """The SMART system scopes an endpoint's token asks for: read (and search) each type it syncs, the
    directory types `_include` brings with referrals, and write the types `senders` push to this server."""
    reads = with_directory(endpoint.resources)
    writes = [
        rtype
        for switch, types in PUSHED_TYPES.items()
        if any(getattr(sender, switch) for sender in senders)
        for rtype in types
    ]
    v2 = endpoint.auth.scope_version == "v2"
    scopes = [f"system/{t}.rs" if v2 else f"system/{t}.read" for t in reads if t not in writes]
    for rtype in writes:
        scopes += [f"system/{rtype}.crus"] if v2 else [f"system/{rtype}.read", f"system/{rtype}.write"]
    return " ".join(scopes)


def _server(endpoints: list[EndpointSettings], name: str) -> bool:
    return any(e.name == name and e.is_server for e in endpoints)


def _check_http_url(value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{value!r} is not an http(s) URL")
    if parts.username or parts.password:
        raise ValueError("put credentials in [endpoints.auth], not in the URL")
    if parts.query or parts.fragment:
        raise ValueError("the URL must not have a query string or fragment")


def _format_location(loc: tuple[int | str, ...], data: dict[str, Any]) -> str:
    """Turn a pydantic error location into the TOML key a person would look for."""
    parts: list[str] = []
    node: Any = data
    for item in loc:
        if isinstance(item, int):
            name = None
            if isinstance(node, list) and item < len(node) and isinstance(node[item], dict):
                name = node[item].get("name")
            parts[-1] = f"{parts[-1]}[{name!r}]" if name else f"{parts[-1]}[{item}]"
            node = node[item] if isinstance(node, list) and item < len(node) else None
        else:
            parts.append(str(item))
            node = node.get(item) if isinstance(node, dict) else None
    return ".".join(parts) or "(top level)"


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings model inside a field's type (`list[EndpointSettings]`, `AuthSettings | None`)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in get_args(annotation):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _keys_at(loc: tuple[int | str, ...]) -> list[str]:
    """The keys the settings accept in the table that holds the key at `loc`."""
    model: type[BaseModel] | None = Settings
    for item in loc[:-1]:
        if isinstance(item, int) or model is None:
            continue
        field = model.model_fields.get(str(item))
        model = _model_of(field.annotation) if field is not None else None
    if model is None:
        return []
    return [name for name, field in model.model_fields.items() if not field.exclude]


def _error_message(error: ErrorDetails) -> str:
    kind = error.get("type", "")
    if kind == "extra_forbidden":
        key = str(error["loc"][-1]) if error.get("loc") else ""
        close = difflib.get_close_matches(key, _keys_at(tuple(error["loc"])), n=1, cutoff=0.6)
        return f"unknown key; did you mean `{close[0]}`?" if close else "unknown key"
    if kind == "missing":
        return "required key is missing"
    msg = str(error.get("msg", "invalid value"))
    return msg.removeprefix("Value error, ")


def parse_settings(data: dict[str, Any], *, source: Path | None = None, secrets: bool = True) -> Settings:
    """Validate a parsed TOML document; errors name the file and the key.

    With `secrets=False` the endpoints' `env:` / `file:` secrets are left unread (as their references),
    for the commands that only read the warehouse.
    """
    where = str(source) if source else "<config>"
    context = {"config_dir": source.parent if source else None, "secrets": secrets}
    try:
        settings = Settings.model_validate(data, context=context)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_input=False, include_url=False):
            lines.append(f"{where}: {_format_location(error['loc'], data)}: {_error_message(error)}")
        raise ConfigError("\n".join(lines)) from None
    return settings.model_copy(update={"source_file": source})


def config_path(explicit: str | Path | None = None) -> Path:
    """The config file to use: `--config`, else $CONNECTOR_CONFIG, else ./connector.toml."""
    if explicit:
        return Path(explicit)
    return Path(os.environ.get(CONFIG_ENV_VAR) or DEFAULT_CONFIG_FILE)


def load_settings(path: str | Path | None = None, *, secrets: bool = True) -> Settings:
    """Read and validate the configuration file (`secrets=False`: see `parse_settings`)."""
    file = config_path(path)
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{file}: configuration file not found (write an example with `connector init`)"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{file}: not valid TOML: {exc}") from None
    settings = parse_settings(data, source=file.resolve(), secrets=secrets)
    if _holds_credentials(settings):
        # A file naming no credentials (the packaged demo, an NDJSON-only setup) is not worth a warning.
        warn_if_exposed(file, "configuration file")
    return settings


def _holds_credentials(settings: Settings) -> bool:
    """Whether the file configures any credential (even as env:/file: references, which say where
    secrets live), or a warehouse URL with a password."""
    if urlsplit(settings.warehouse.url).password:
        return True
    return any(endpoint.auth.type != "none" for endpoint in settings.endpoints)


EXAMPLE_CONFIG = """\
# connector.toml: where the connector reads FHIR data from and where it writes the warehouse.
# Check it with `connector check`; run it with `connector sync`. Every key the connector accepts is below;
# a commented-out key shows its default. Keep this file private (`chmod 600`).
# Secrets can be written as env:NAME (read from an environment variable) or file:/path (read from a file),
# so that this file itself holds none.

[warehouse]
# SQLite for a single machine; PostgreSQL in production, e.g.
# url = "postgresql+psycopg://connector@db.internal/warehouse"
url = "sqlite:///warehouse.db"
# batch_size = 500                         # rows per INSERT .. ON CONFLICT statement

[[endpoints]]
name = "clinic-emr"                        # letters, digits, - _ . ; shows up in every warehouse row
base_url = "https://emr.example.org/fhir/R4"
# enabled = true                           # false: kept in the file, skipped by sync / serve / check
resources = ["ServiceRequest", "Appointment", "Encounter", "Coverage", "CoverageEligibilityResponse",
             "Claim", "ClaimResponse", "ExplanationOfBenefit"]
schedule = "*/15 * * * *"                  # cron, used by `connector serve`
# page_size = 200                          # _count per search page
# overlap_seconds = 60                     # re-read this much before the watermark (duplicates are harmless)
# incremental = "auto"                     # auto | last-updated | date-param | full
# validation = "strict"                    # strict: whole resources (FHIR R4); mapped: only what is mapped
# max_connections = 4                      # HTTP connections to this server at once
# profile = "generic"                      # the EMR's search rules: generic | epic | oracle | athena
# practice_id = "195900"                   # athena: sent as ah-practice=Organization/a-1.Practice-{id}
# patient_group_id = "practice-patients"   # types the profile searches only per patient: the Group's members
# patient_group_export = false            # true: the Group's patients by $export, not a Group read
# patient_search = "general-practitioner=Organization/practice-1"   # ... or this Patient search's matches
# patient_list_file = "patients.txt"       # ... or these ids, one per line
# verify_tls = true                        # false only for a test server with a self-signed certificate

# Bulk Data $export (for first loads and full refreshes):
# bulk = "auto"                            # auto (when the server offers it) | always | never
# bulk_level = "system"                    # system | group | patient
# bulk_group_id = "practice-patients"      # the Group, with bulk_level = "group"
# bulk_poll_cap_seconds = 300              # longest wait between status polls, whatever Retry-After says
# bulk_deadline_hours = 24                 # an export not done by then is cancelled (DELETE)
# bulk_max_parallel_downloads = 2          # export files downloaded and loaded at once
# bulk_allowed_hosts = []                  # other hosts that may serve export files (never sent credentials)

# Write back to the EMR (off by default): a Task per new referral, a MeasureReport per week.
# push_acknowledgments = false
# push_metrics = false
owner = "Organization/practice-1"          # the practice; needed when pushing
# offered_disciplines = ["PT", "OT"]       # other referrals are acknowledged as rejected
# accept_complete_intake = true            # complete intakes acknowledged as accepted, not received
# acknowledge_since = "2026-11-01"         # do not acknowledge older referrals
# metrics_period = "week"                  # week | month
# push_endpoint = "other-endpoint"         # write to another configured endpoint's server instead
# push_max_attempts = 5                    # a push item is marked failed after this many attempts
# Push-based intake (`connector listen`, see docs/subscriptions.md): the server notifies new referrals.
# subscriptions = false
# subscription_resources = ["ServiceRequest"]   # subscribed types (each polled too, as the safety net)
# subscription_secret = "env:EMR_HOOK_SECRET"    # sent by the server as Authorization: Bearer ...
# subscription_payload = "id-only"         # id-only | full-resource | empty (R4 Backport topics)
# subscription_topics = { "ServiceRequest" = "http://example.org/SubscriptionTopic/new-referral" }
# heartbeat_seconds = 60                   # three missed heartbeats mark the subscription unhealthy
# case_summary = "communication"           # communication | document-reference | off: a summary to the
#                                          # referrer after the evaluation, each progress report, discharge
# identifier_system = "urn:therapy-fhir-connector:acknowledgment"   # system of the Task / MeasureReport ids
# measure_base = "https://therapy-fhir-connector.org/fhir/Measure"  # base of the Measures reported on

# How resources are mapped (all optional):
[endpoints.mapping]
# intake_required = ["diagnosis", "referral_reason", "payer", "requested_start", "referrer", "patient"]
# keep_subscriber_id = false               # true stores Coverage.subscriberId; default keeps a hash only
[endpoints.mapping.discipline_codes]       # local codes -> PT / OT / SLP / other, on top of the shipped map
"http://clinic.example.org/codes|PT-EVAL" = "PT"

# Which visits are evaluations where the shipped code map (CPT 97161-97168, 92521-92524, ...) says nothing:
[endpoints.visits]
# evaluation_codes = ["http://clinic.example.org/visit-types|PTEVAL", "INITIAL"]   # system|code, or a code
# evaluation_text = ["eval", "initial visit"]   # words of the visit type's text / display
# Where no code says: a visit not basedOn a referral is linked to the patient's latest referral of the same
# discipline within the window, and a referral's first attended (or booked) visit is its evaluation:
# infer_evaluations = true
# evaluation_window_days = 90

# Used when the server cannot search by _lastUpdated:
[endpoints.date_params]
ServiceRequest = "authored"
Claim = "created"

[endpoints.timeouts]                       # seconds
# connect = 10
# read = 60
# write = 30
# pool = 30                                # waiting for a free connection

[endpoints.retry]                          # transient failures: connect/read errors, 408, 429, 5xx
# max_attempts = 6
# max_total_wait_seconds = 300             # give up when one request's waits would add up to more
# initial_backoff_seconds = 1
# max_backoff_seconds = 60
# retry_after_cap_seconds = 120            # a server's Retry-After is honoured up to this

[endpoints.auth]
type = "smart-backend"                     # none | basic | bearer | smart-backend
client_id = "connector"
token_url = "https://emr.example.org/oauth2/token"
private_key_file = "/run/secrets/connector.pem"
# private_key = "env:CONNECTOR_PRIVATE_KEY"  # the PEM itself, instead of private_key_file
algorithm = "RS384"                        # RS384 | ES384
# key_id = "connector-key-1"               # JWT `kid`; default: the key's JWK thumbprint (RFC 7638)
# scope = "system/ServiceRequest.read"     # default: read each type in `resources` (and the directory
#                                          # types with ServiceRequest), write Task / MeasureReport only
#                                          # when pushing to this server
# scope_version = "v1"                     # v1: system/Coverage.read | v2: system/Coverage.rs
# refresh_margin_seconds = 60              # refresh a cached token this long before it expires
# For basic:
# username = "connector"
# password = "env:EMR_PASSWORD"
# For bearer:
# token = "file:/run/secrets/emr-token"

# How flows run (all optional; see docs/orchestration.md):
# [runtime]
# task_runner = "threads"                  # threads | processes | dask
# dask_address = "tcp://scheduler:8786"    # an existing Dask cluster (task_runner = "dask"); else a local one
# max_parallel_streams = 4                 # stream / backfill-window tasks per endpoint at once (EMR limits)
# endpoint_parallel_streams = { "clinic-emr" = 2 }
# backfill_windows = 4                     # a first sync is split into this many _lastUpdated windows
# backfill_min_resources = 10000           # ... when the server counts at least this many resources
# map_workers = 2                          # processes validating and mapping pages; default one per core
# prefect_start_timeout = 120              # seconds to wait for the local Prefect server to start

# The listener for Subscription notifications (`connector listen`; only with subscriptions = true):
# [listen]
# host = "127.0.0.1"                       # behind a TLS reverse proxy (docs/subscriptions.md)
# port = 8787
# public_url = "https://hooks.practice.example"   # where the EMR reaches the proxy
# max_body_bytes = 1000000                 # larger notifications are refused unread
# healthy_poll_minutes = 60                # `serve` polls subscribed streams this often while healthy
# check_seconds = 30                       # how often subscriptions are checked (status, $status, heartbeats)

# A folder of Bulk Data NDJSON files (*.ndjson, *.ndjson.gz) instead of a server:
# [[endpoints]]
# name = "monthly-export"
# ndjson_dir = "exports/2026-11"           # relative to this file's folder
"""


def quiet_third_party_logs(verbose: bool) -> None:
    """Keep the CLI's output to our own summary: Prefect and httpx log at INFO by default.

    Must run before Prefect is imported (Prefect reads its logging level from the environment).
    httpx logs full request URLs, query strings included, at INFO; those stay off in every mode.
    """
    import logging

    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "CRITICAL")
    # The local Prefect server would otherwise try to phone home from a practice's network.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    for name in ("httpx", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
