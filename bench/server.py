"""A small, fast FHIR R4 search server over the synthetic data set, for the benchmark.

    .venv/bin/python -m bench.server --n 120000      # prints http://127.0.0.1:PORT once it is ready

One server serves every size up to N: `{root}/n{K}` is a FHIR base holding the first K resources of the
data set (`bench.data`), e.g. `http://127.0.0.1:PORT/n20000`. Supported, per base:

- `GET /metadata`: a CapabilityStatement (FHIR 4.0.1) declaring search-type, `_lastUpdated`, `_sort` and
  `_count` for ServiceRequest, Coverage and Claim, so the connector chooses the `last-updated` mode.
- `GET /{Type}?_count=&_sort=_lastUpdated|-_lastUpdated&_lastUpdated=gt|ge|lt|le<instant>` (repeatable):
  a searchset Bundle with `total`, `link` self and next (`_offset` into the filtered range; the data never
  changes, so offsets are exact), and `meta.lastUpdated` = the newest resource of the K-resource data set
  (the server's "now": nothing in it is newer, which is what the connector's watermark logic expects).
- `_summary=count`: the total only. Other parameters (`_include`, ...) are ignored.

Every entry's JSON is built once at start-up, without its base URL, so a page is one bytes join. The
HTTP side is plain asyncio (HTTP/1.1, keep-alive, Content-Length, GET only).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import re
import select
import socket
import subprocess
import sys
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

import orjson

from bench.data import TYPES, instant, instant_ms, iter_resources

FHIR_JSON = b"application/fhir+json"
MAX_COUNT = 5000
DEFAULT_COUNT = 100
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_BASE_RE = re.compile(r"^/n(\d+)(?:/(.*))?$")


class BadRequest(Exception):
    pass


@dataclass(slots=True)
class TypeIndex:
    """One resource type's entries, in `meta.lastUpdated` order."""

    positions: list[int] = field(default_factory=list)  # index in the whole data set
    times: list[int] = field(default_factory=list)  # meta.lastUpdated, ms since the epoch
    tails: list[bytes] = field(default_factory=list)  # entry JSON after `{"fullUrl":"<base>`


class DataSet:
    """The first `n` resources, pre-serialised per type."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.types: dict[str, TypeIndex] = {t: TypeIndex() for t in TYPES}
        for i, resource in enumerate(iter_resources(n)):
            rtype = resource["resourceType"]
            index = self.types[rtype]
            index.positions.append(i)
            index.times.append(instant_ms(i))
            index.tails.append(
                b'/%s/%s","resource":%s,"search":{"mode":"match"}}'
                % (rtype.encode(), resource["id"].encode(), orjson.dumps(resource))
            )

    def capability(self, base: str) -> bytes:
        resources = [
            {
                "type": rtype,
                "interaction": [{"code": "read"}, {"code": "search-type"}],
                "searchParam": [
                    {"name": "_lastUpdated", "type": "date"},
                    {"name": "_count", "type": "number"},
                    {"name": "_sort", "type": "string"},
                    {"name": "_summary", "type": "token"},
                ],
            }
            for rtype in TYPES
        ]
        return orjson.dumps(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "date": "2026-01-01",
                "kind": "instance",
                "software": {"name": "therapy-fhir-connector benchmark server"},
                "implementation": {"description": "synthetic therapy data", "url": base},
                "fhirVersion": "4.0.1",
                "format": ["application/fhir+json"],
                "rest": [{"mode": "server", "resource": resources}],
            }
        )

    def search(self, base: str, k: int, rtype: str, query: str) -> bytes:
        index = self.types[rtype]
        params = parse_qsl(query, keep_blank_values=True)
        lo, hi = 0, bisect_left(index.positions, k)
        count, offset, descending, summary = DEFAULT_COUNT, 0, False, None
        for name, value in params:
            if name == "_lastUpdated":
                lo, hi = _narrow(index.times, lo, hi, value)
            elif name == "_count":
                count = _int(name, value, 0, MAX_COUNT)
            elif name == "_offset":
                offset = _int(name, value, 0, 10**9)
            elif name == "_sort":
                if value not in ("_lastUpdated", "-_lastUpdated"):
                    raise BadRequest(f"unsupported _sort {value!r}")
                descending = value.startswith("-")
            elif name == "_summary":
                summary = value
        total = max(0, hi - lo)
        server_time = instant(k - 1) if k else instant(0)
        self_url = f"{base}/{rtype}" + (f"?{query}" if query else "")
        head = {
            "resourceType": "Bundle",
            "id": f"bench-{next(_BUNDLE_IDS)}",
            "meta": {"lastUpdated": server_time},
            "type": "searchset",
            "total": total,
        }
        if summary == "count" or count == 0:
            head["link"] = [{"relation": "self", "url": self_url}]
            return orjson.dumps(head)
        start = offset
        end = min(offset + count, total)
        links = [{"relation": "self", "url": self_url}]
        if end < total:
            kept = [(n, v) for n, v in params if n != "_offset"]
            links.append(
                {"relation": "next", "url": f"{base}/{rtype}?{urlencode([*kept, ('_offset', str(end))])}"}
            )
        head["link"] = links
        if start >= end:
            return orjson.dumps(head)
        tails = index.tails[hi - end : hi - start][::-1] if descending else index.tails[lo + start : lo + end]
        prefix = b',{"fullUrl":"' + base.encode()
        return b"".join(
            (orjson.dumps(head)[:-1], b',"entry":[{"fullUrl":"', base.encode(), prefix.join(tails), b"]}")
        )


_BUNDLE_IDS = itertools.count(1)


def _int(name: str, value: str, low: int, high: int) -> int:
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(f"{name} must be an integer") from None
    return min(max(number, low), high)


def parse_instant_ms(text: str) -> int:
    """A FHIR instant or dateTime (`2026-01-01T00:00:00.037Z`, `+01:00`, or a date) as epoch ms (UTC)."""
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"not a FHIR instant: {text!r}") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // timedelta(milliseconds=1)


def _narrow(times: list[int], lo: int, hi: int, value: str) -> tuple[int, int]:
    prefix, text = (value[:2], value[2:]) if value[:2] in ("gt", "ge", "lt", "le", "eq") else ("eq", value)
    ms = parse_instant_ms(text)
    if prefix == "gt":
        lo = max(lo, bisect_right(times, ms))
    elif prefix == "ge":
        lo = max(lo, bisect_left(times, ms))
    elif prefix == "lt":
        hi = min(hi, bisect_left(times, ms))
    elif prefix == "le":
        hi = min(hi, bisect_right(times, ms))
    else:
        lo, hi = max(lo, bisect_left(times, ms)), min(hi, bisect_right(times, ms))
    return lo, hi


def _outcome(text: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "error", "code": "processing", "diagnostics": text}],
        }
    )


class FhirApp:
    """Routes one GET to a (status, body)."""

    def __init__(self, data: DataSet, root: str) -> None:
        self.data = data
        self.root = root

    def respond(self, method: str, target: str) -> tuple[int, bytes]:
        parts = urlsplit(target)
        match = _BASE_RE.match(unquote(parts.path).rstrip("/"))
        if match is None:
            return 404, _outcome("unknown path; bases are /n{K} for K up to N")
        k = int(match.group(1))
        rest = match.group(2) or ""
        if k > self.data.n:
            return 404, _outcome(f"this server holds {self.data.n} resources")
        if method != "GET":
            return 405, _outcome("read-only server: GET only")
        base = f"{self.root}/n{k}"
        try:
            if rest == "metadata":
                return 200, self.data.capability(base)
            if rest in self.data.types:
                return 200, self.data.search(base, k, rest, parts.query)
        except BadRequest as exc:
            return 400, _outcome(str(exc))
        return 404, _outcome("unknown resource type or interaction")


_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 405: b"Method Not Allowed"}


async def _handle(app: FhirApp, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            request_line = await reader.readline()
            if not request_line.strip():
                break
            keep_alive = True
            length = 0
            while True:
                header = await reader.readline()
                if header in (b"\r\n", b"\n", b""):
                    break
                name, _, value = header.partition(b":")
                name = name.strip().lower()
                if name == b"connection":
                    keep_alive = value.strip().lower() != b"close"
                elif name == b"content-length":
                    length = int(value.strip() or 0)
            if length:
                await reader.readexactly(length)
            try:
                method, target, version = request_line.decode("latin-1").split()
            except ValueError:
                break
            if version == "HTTP/1.0":
                keep_alive = False
            status, body = app.respond(method, target)
            writer.write(
                b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n"
                % (
                    status,
                    _REASONS.get(status, b"Error"),
                    FHIR_JSON if status == 200 or body.startswith(b'{"resourceType"') else b"text/plain",
                    len(body),
                    b"" if keep_alive else b"Connection: close\r\n",
                )
            )
            writer.write(body)
            await writer.drain()
            if not keep_alive:
                break
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def serve(n: int, port: int = 0, *, ready: Callable[[str], None] | None = None) -> None:
    """Build the data set, listen on 127.0.0.1, report the root URL through `ready`, serve forever."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    root = f"http://127.0.0.1:{sock.getsockname()[1]}"
    data = await asyncio.to_thread(DataSet, n)
    app = FhirApp(data, root)
    server = await asyncio.start_server(lambda r, w: _handle(app, r, w), sock=sock, limit=1 << 16)
    if ready is not None:
        ready(root)
    async with server:
        await server.serve_forever()


@dataclass
class ServerHandle:
    """A benchmark server running in its own process."""

    root: str
    n: int
    process: subprocess.Popen[bytes]

    def base(self, k: int) -> str:
        if k > self.n:
            raise ValueError(f"the server holds {self.n} resources, not {k}")
        return f"{self.root}/n{k}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(n: int, *, timeout: float = 600.0) -> ServerHandle:
    """Start `python -m bench.server --n N` and wait for its root URL (building 120,000 entries takes a
    while on a busy machine)."""
    process = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "bench.server", "--n", str(n)],
        stdout=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
    )
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline().decode().strip() if readable else ""
    if not line.startswith("http://"):
        process.kill()
        process.wait()
        raise RuntimeError(f"bench server did not start (exit code {process.returncode}, said {line!r})")
    return ServerHandle(root=line, n=n, process=process)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.server", description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=120_000, help="resources held (bases /n1 ... /nN)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    args = parser.parse_args(argv)

    def ready(root: str) -> None:
        sys.stdout.write(root + "\n")
        sys.stdout.flush()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.n, args.port, ready=ready))


if __name__ == "__main__":
    main()
