"""The report's funnel and top sources for the integration practice served by sekmet-fhir, per checkout.

Loads the generated practice (`tests/integration/practice.py`, 6,000+ resources) into one sekmet-fhir
server, then for each checkout given (default: this one) runs that checkout's own connector against it
(`connector sync` in a subprocess, its code first on the path) into a warehouse of its own and prints what
its report shows for 12 weeks up to the practice's "now": the KPI, the funnel and the top sources. Used to
compare a fix with the code before it:

    git worktree add /tmp/before <rev>
    .venv/bin/python scripts/sekmet_practice_report.py /tmp/before .

Needs the sekmet-fhir virtualenv of the integration tests (`.cache/sekmet-venv`, created when missing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.prefect_api import child_env  # noqa: E402 (after the path)
from tests.integration.conftest import serve_sekmet  # noqa: E402
from tests.integration.practice import PRACTICE_NOW, generate, load  # noqa: E402

#: Run inside each checkout: its report's numbers as JSON (keys that exist in every version).
_READ = """
import json, sys
from datetime import date
import sqlalchemy as sa
from connector.report import collect, parse_period
engine = sa.create_engine(sys.argv[1])
data = collect(engine, parse_period("12w", date.fromisoformat(sys.argv[2])))
weekly = data["referrals_weekly"]
with engine.connect() as conn:
    kinds = dict(conn.execute(sa.text("SELECT kind, COUNT(*) FROM visit GROUP BY kind")).all())
print(json.dumps({
    "kpi_new_referrals": sum(w["referrals"] for w in weekly["totals"]),
    "funnel": data["funnel"]["totals"],
    "chart_sources": weekly["sources"],
    "top_sources": [(s["source"], s["last_90_days"]) for s in data["sources"][:15]],
    "visit_kinds": kinds,
}))
"""


class _Folders:
    """The one method of pytest's TempPathFactory that `serve_sekmet` uses."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def mktemp(self, name: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.root))


def _run(checkout: Path, base_url: str, work: Path) -> dict[str, object]:
    work.mkdir(parents=True, exist_ok=True)
    warehouse = f"sqlite:///{work / 'warehouse.db'}"
    config = work / "connector.toml"
    config.write_text(
        f'[warehouse]\nurl = "{warehouse}"\n\n[[endpoints]]\nname = "sekmet"\nbase_url = "{base_url}"\n'
        '[endpoints.auth]\ntype = "none"\n',
        encoding="utf-8",
    )
    config.chmod(0o600)
    env = child_env(PYTHONPATH=str(checkout))
    sync = subprocess.run(  # noqa: S603 - this interpreter, fixed arguments
        [sys.executable, "-m", "connector", "sync", "--config", str(config)],
        cwd=checkout, env=env, capture_output=True, text=True, check=False, timeout=1800,
    )  # fmt: skip
    if sync.returncode != 0:
        raise SystemExit(f"{checkout}: sync failed (rc {sync.returncode}): {sync.stderr[-2000:]}")
    read = subprocess.run(  # noqa: S603 - as above
        [sys.executable, "-c", _READ, warehouse, PRACTICE_NOW.date().isoformat()],
        cwd=checkout, env=env, capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    if read.returncode != 0:
        raise SystemExit(f"{checkout}: reading the report failed: {read.stderr[-2000:]}")
    result: dict[str, object] = json.loads(read.stdout)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("checkouts", nargs="*", type=Path, default=[ROOT], help="connector checkouts to run")
    args = parser.parse_args(argv)
    with (
        tempfile.TemporaryDirectory(prefix="sekmet-practice-") as tmp,
        serve_sekmet(_Folders(Path(tmp))) as base_url,  # type: ignore[arg-type]
    ):
        practice = generate()
        with httpx.Client(base_url=base_url, timeout=120) as client:
            load(client, practice)
        print(f"sekmet-fhir at {base_url}: {sum(practice.counts().values())} resources loaded")
        for n, checkout in enumerate(args.checkouts):
            result = _run(checkout.resolve(), base_url, Path(tmp) / f"run-{n}")
            print(f"\n== {checkout}")
            print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
