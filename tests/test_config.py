"""Configuration: the TOML contract, secrets indirection, and errors that name the file and the key."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import get_origin

import pytest
from pydantic import BaseModel

from connector.config import (
    EXAMPLE_CONFIG,
    Settings,
    _model_of,
    load_settings,
    parse_settings,
    resolve_secret,
)
from connector.errors import ConfigError

MINIMAL = """
[warehouse]
url = "sqlite:///wh.db"

[[endpoints]]
name = "clinic-emr"
base_url = "https://emr.example.org/fhir/R4/"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "connector.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_config_gets_defaults_and_normalised_url(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL))
    endpoint = settings.endpoint("clinic-emr")
    assert endpoint.base_url == "https://emr.example.org/fhir/R4"
    assert endpoint.page_size == 200
    assert endpoint.verify_tls is True
    assert endpoint.auth.type == "none"
    assert "ServiceRequest" in endpoint.resources
    assert settings.source_file == (tmp_path / "connector.toml").resolve()


def test_example_config_from_init_is_valid(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, EXAMPLE_CONFIG))
    endpoint = settings.endpoints[0]
    assert endpoint.auth.type == "smart-backend"
    assert endpoint.schedule == "*/15 * * * *"
    assert endpoint.date_params == {"ServiceRequest": "authored", "Claim": "created"}


def test_several_endpoints_and_relative_ndjson_dir(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[endpoints]]\nname = "monthly-export"\nndjson_dir = "exports/2026-11"\n'
    settings = load_settings(write(tmp_path, text))
    assert [e.name for e in settings.endpoints] == ["clinic-emr", "monthly-export"]
    assert settings.endpoint("monthly-export").ndjson_dir == tmp_path.resolve() / "exports/2026-11"
    assert not settings.endpoint("monthly-export").is_server


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('colour = "blue"', "endpoints['clinic-emr'].colour: unknown key"),
        ('schedule = "every monday"', "endpoints['clinic-emr'].schedule: 'every monday' is not a valid cron"),
        ('resources = ["Patients"]', "endpoints['clinic-emr'].resources: unsupported resource type Patients"),
        ("page_size = 0", "endpoints['clinic-emr'].page_size"),
    ],
)
def test_bad_endpoint_keys_are_named(tmp_path: Path, snippet: str, expected: str) -> None:
    path = write(tmp_path, MINIMAL + snippet + "\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert str(path.resolve()) in str(info.value)
    assert expected in str(info.value)


def test_bad_url_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("https://emr.example.org/fhir/R4/", "emr.example.org/fhir"))
    with pytest.raises(ConfigError, match=r"endpoints\['clinic-emr'\]\.base_url: .*not an http\(s\) URL"):
        load_settings(path)


def test_credentials_in_url_are_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("https://", "https://user:hunter2@"))
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert "hunter2" not in str(info.value)
    assert "base_url" in str(info.value)


def test_missing_source_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, '[[endpoints]]\nname = "x"\n')
    with pytest.raises(ConfigError, match=r"endpoints\['x'\]: set exactly one of `base_url`"):
        load_settings(path)


def test_unknown_top_level_table_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"warehous: unknown key; did you mean `warehouse`\?"):
        load_settings(write(tmp_path, MINIMAL + '\n[warehous]\nurl = "x"\n'))


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ("page_sise = 100\n", "endpoints['clinic-emr'].page_sise: unknown key; did you mean `page_size`?"),
        (
            '[endpoints.auth]\ntype = "none"\nscopes = "x"\n',
            "endpoints['clinic-emr'].auth.scopes: unknown key; did you mean `scope`?",
        ),
        (
            "[endpoints.retry]\nmax_attempt = 3\n",
            "retry.max_attempt: unknown key; did you mean `max_attempts`?",
        ),
        (
            "[runtime]\nmax_parallel_stream = 2\n",
            "runtime.max_parallel_stream: unknown key; did you mean `max_parallel_streams`?",
        ),
        ("[runtime]\nfavourite_colour = 2\n", "runtime.favourite_colour: unknown key\n"),
    ],
)
def test_an_unknown_key_says_which_key_was_meant(tmp_path: Path, snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, MINIMAL + snippet))
    assert expected in str(info.value) + "\n"


def test_duplicate_endpoint_names(tmp_path: Path) -> None:
    text = MINIMAL + '\n[[endpoints]]\nname = "clinic-emr"\nndjson_dir = "x"\n'
    with pytest.raises(ConfigError, match="used twice"):
        load_settings(write(tmp_path, text))


def test_missing_secret_env_var_names_the_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EMR_TEST_PASSWORD", raising=False)
    text = (
        MINIMAL + '[endpoints.auth]\ntype = "basic"\nusername = "svc"\npassword = "env:EMR_TEST_PASSWORD"\n'
    )
    with pytest.raises(ConfigError) as info:
        load_settings(write(tmp_path, text))
    assert "endpoints['clinic-emr'].auth.password: environment variable EMR_TEST_PASSWORD is not set" in str(
        info.value
    )


def test_secrets_resolve_and_never_show_in_repr(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EMR_TEST_PASSWORD", "s3cret-from-env")
    token_file = tmp_path / "token"
    token_file.write_text("tok-from-file\n")
    text = (
        MINIMAL + '[endpoints.auth]\ntype = "basic"\nusername = "svc"\npassword = "env:EMR_TEST_PASSWORD"\n'
    )
    settings = load_settings(write(tmp_path, text))
    auth = settings.endpoints[0].auth
    assert auth.password is not None
    assert auth.password.get_secret_value() == "s3cret-from-env"
    assert "s3cret-from-env" not in repr(settings)
    assert "s3cret-from-env" not in settings.model_dump_json()
    assert resolve_secret(f"file:{token_file}") == "tok-from-file"


def test_unreadable_secret_file(tmp_path: Path) -> None:
    text = MINIMAL + f'[endpoints.auth]\ntype = "bearer"\ntoken = "file:{tmp_path}/missing"\n'
    with pytest.raises(ConfigError, match=r"auth\.token: cannot read secret file"):
        load_settings(write(tmp_path, text))


def test_auth_type_requires_its_keys(tmp_path: Path) -> None:
    text = (
        MINIMAL + '[endpoints.auth]\ntype = "smart-backend"\nclient_id = "c"\ntoken_url = "https://a/token"\n'
    )
    with pytest.raises(ConfigError, match="needs `private_key_file`"):
        load_settings(write(tmp_path, text))


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not found.*connector init"):
        load_settings(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_settings(write(tmp_path, "[[endpoints]\n"))


def test_config_env_var_is_used_when_no_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, MINIMAL)
    monkeypatch.setenv("CONNECTOR_CONFIG", str(path))
    assert load_settings().endpoints[0].name == "clinic-emr"


def test_unknown_endpoint_lookup_lists_known(tmp_path: Path) -> None:
    settings = parse_settings(tomllib.loads(MINIMAL))
    with pytest.raises(ConfigError, match="configured: clinic-emr"):
        settings.endpoint("other")


def test_mapping_options_from_config(tmp_path: Path) -> None:
    text = (
        MINIMAL + '[endpoints.mapping]\nintake_required = ["diagnosis", "payer"]\nkeep_subscriber_id = true\n'
        '[endpoints.mapping.discipline_codes]\n"http://clinic.example.org/codes|PT-EVAL" = "PT"\n'
    )
    options = load_settings(write(tmp_path, text)).endpoints[0].mapping.options()
    assert options.intake_required == ("diagnosis", "payer")
    assert options.keep_subscriber_id is True
    assert options.discipline_codes == {"http://clinic.example.org/codes|PT-EVAL": "PT"}


@pytest.mark.parametrize(
    ("snippet", "expected"),
    [
        ('[endpoints.mapping.discipline_codes]\n"PT-EVAL" = "PT"\n', "write codes as 'system|code'"),
        ('[endpoints.mapping.discipline_codes]\n"s|c" = "massage"\n', "discipline must be one of PT, OT"),
        ('[endpoints.mapping]\nintake_required = ["shoe size"]\n', "unknown intake item shoe size"),
    ],
)
def test_bad_mapping_options_are_named(tmp_path: Path, snippet: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"endpoints\['clinic-emr'\]\.mapping\.") as info:
        load_settings(write(tmp_path, MINIMAL + snippet))
    assert expected in str(info.value)


def _settings_keys(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Every key the settings accept, dotted (`endpoints.auth.scope`); dict-valued keys are leaves."""
    keys = set()
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        nested = _model_of(field.annotation)
        if nested is not None and get_origin(field.annotation) is not dict:
            keys |= _settings_keys(nested, f"{prefix}{name}.")
        else:
            keys.add(prefix + name)
    return keys


def _template_keys(text: str) -> set[str]:
    """The keys `connector init` writes, set or commented out, under their (possibly commented) tables."""
    keys, table = set(), ""
    for line in text.splitlines():
        header = re.match(r"^#?\s*\[\[?([A-Za-z_.]+)\]\]?", line)
        if header:
            table = header.group(1) + "."
            keys.add(header.group(1))
            continue
        key = re.match(r"^#?\s*([a-z_]+)\s*=", line)
        if key:
            keys.add(table + key.group(1))
    return keys


def test_the_init_template_documents_every_key_the_settings_accept() -> None:
    accepted = _settings_keys(Settings)
    written = _template_keys(EXAMPLE_CONFIG)
    assert accepted - written == set(), "keys missing from connector init's template"
    tables = {
        k
        for k in written
        if k in {"warehouse", "endpoints", "runtime", "listen"}
        or (
            k.count(".") == 1
            and k.split(".")[1] in {"mapping", "timeouts", "retry", "auth", "date_params", "visits"}
        )
    }
    assert written - accepted - tables - {"endpoints.mapping.discipline_codes"} == set(), "unknown keys"


def test_the_init_template_with_every_commented_key_set_is_valid(tmp_path: Path) -> None:
    # Uncommenting the keys (not the prose, not a second value of a key set already) gives a valid file.
    active = _template_keys(
        "\n".join(line for line in EXAMPLE_CONFIG.splitlines() if not line.startswith("#"))
    )
    lines, table = [], ""
    for line in EXAMPLE_CONFIG.split("# A folder of Bulk Data")[0].splitlines():
        line = line.removeprefix("# ") if line in ("# [runtime]", "# [listen]") else line
        header = re.match(r"^\[\[?([A-Za-z_.]+)\]\]?", line)
        table = header.group(1) + "." if header else table
        match = re.match(r"^# (([a-z_]+) = .*)$", line)
        if match and table + match.group(2) not in active:
            line = match.group(1)
        lines.append(line)
    text = "\n".join(lines).replace('bulk_level = "system"', 'bulk_level = "group"')
    text = text.replace('task_runner = "threads"', 'task_runner = "dask"')
    text = text.replace('push_endpoint = "other-endpoint"', "")
    settings = parse_settings(tomllib.loads(text), source=tmp_path / "connector.toml", secrets=False)
    endpoint = settings.endpoints[0]
    assert endpoint.bulk_group_id == "practice-patients"
    assert endpoint.auth.refresh_margin_seconds == 60
    assert endpoint.retry.retry_after_cap_seconds == 120
