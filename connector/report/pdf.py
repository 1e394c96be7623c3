"""Headless Chromium: print the report to PDF (and, for tests, dump the drawn page or a screenshot).

Driven through its command line, so no Python browser package and no browser download is needed: a
system Chromium (Debian's `chromium`) is enough, and without one `--pdf` says so and the HTML still stands.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from connector.errors import ConnectorError

#: Names the browser goes by on Debian, Ubuntu and Google's packages, tried in this order.
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
#: Milliseconds of page time Chromium grants scripts before it prints or dumps: the charts are drawn
#: asynchronously after load, and virtual time lets them finish without a wall-clock sleep.
VIRTUAL_TIME_BUDGET_MS = 15_000
#: Wall-clock limit for one Chromium run.
TIMEOUT_S = 120

# Without a network (CI, closed clinic networks) the browser's own background fetches only fail noisily.
_QUIET_FLAGS = (
    "--headless",
    "--no-sandbox",  # runs as root in containers and CI, where the sandbox cannot start
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--mute-audio",
)


class BrowserError(ConnectorError):
    """Chromium is missing or did not produce its output."""


def find_chromium() -> str | None:
    """The path of a Chromium-like browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


@dataclass(frozen=True)
class BrowserRun:
    stdout: str
    stderr: str


def run_chromium(
    page: Path, extra: Sequence[str], *, browser: str | None = None, log_console: bool = False
) -> BrowserRun:
    """Load `page` (a local file) in headless Chromium with `extra` flags; a fresh profile per run."""
    exe = browser or find_chromium()
    if exe is None:
        raise BrowserError("no headless Chromium found (install the `chromium` package) for --pdf")
    with tempfile.TemporaryDirectory(prefix="connector-chromium-") as profile:
        cmd = [
            exe,
            *_QUIET_FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}",
            *(["--enable-logging=stderr", "--v=0"] if log_console else []),
            *extra,
            page.resolve().as_uri(),
        ]
        try:
            done = subprocess.run(  # noqa: S603 - fixed flags, our own file URL
                cmd, capture_output=True, text=True, timeout=TIMEOUT_S, check=False
            )
        except subprocess.TimeoutExpired:
            raise BrowserError(f"Chromium did not finish within {TIMEOUT_S} s") from None
        except OSError as exc:
            raise BrowserError(f"cannot start {exe}: {exc.strerror}") from None
    if done.returncode != 0:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise BrowserError(f"Chromium exited with {done.returncode}: {tail[:200]}")
    return BrowserRun(stdout=done.stdout, stderr=done.stderr)


def print_pdf(html: Path, pdf: Path, *, browser: str | None = None) -> Path:
    """Print the report page to `pdf` (A4, as the page's print styles lay it out); returns its path."""
    pdf = pdf.expanduser().resolve()
    pdf.parent.mkdir(parents=True, exist_ok=True)
    pdf.unlink(missing_ok=True)  # so a stale file is never mistaken for this run's output
    run_chromium(html, ["--no-pdf-header-footer", f"--print-to-pdf={pdf}"], browser=browser)
    if not pdf.exists() or pdf.stat().st_size == 0:
        raise BrowserError(f"Chromium wrote no PDF to {pdf}")
    return pdf
