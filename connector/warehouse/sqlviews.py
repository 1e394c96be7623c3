"""Building blocks for the `v_*` views, so each view is written once for SQLite and PostgreSQL.

The views are plain SQL (no functions registered by the connector), so a BI tool that opens the
warehouse directly can read them. SQLite stores timestamps as naive UTC text ('YYYY-MM-DD HH:MM:SS.ffffff');
PostgreSQL as timestamptz. Migrations create views with `create_view`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from alembic import op


def dialect() -> str:
    """The dialect of the migration's connection: 'sqlite' or 'postgresql'."""
    return op.get_bind().dialect.name


def create_view(name: str, sql: str | Mapping[str, str]) -> None:
    """(Re)create a view; `sql` is one SELECT, or one per dialect name."""
    body = sql if isinstance(sql, str) else sql[dialect()]
    op.execute(f"DROP VIEW IF EXISTS {name}")
    op.execute(f"CREATE VIEW {name} AS {body}")


def drop_view(name: str) -> None:
    op.execute(f"DROP VIEW IF EXISTS {name}")


def week_start(expr: str, dialect_name: str) -> str:
    """The Monday (ISO week start) of a UTC timestamp, as a date ('YYYY-MM-DD' text on SQLite)."""
    if dialect_name == "sqlite":
        # 'weekday 0' moves forward to Sunday (or stays on one); six days back is that week's Monday.
        return f"date({expr}, 'weekday 0', '-6 days')"
    return f"CAST(date_trunc('week', ({expr}) AT TIME ZONE 'UTC') AS date)"


def month_start(expr: str, dialect_name: str) -> str:
    """The first day of the UTC month of a timestamp, as a date ('YYYY-MM-01' text on SQLite)."""
    if dialect_name == "sqlite":
        return f"date({expr}, 'start of month')"
    return f"CAST(date_trunc('month', ({expr}) AT TIME ZONE 'UTC') AS date)"


def days_between(later: str, earlier: str, dialect_name: str) -> str:
    """Fractional days from `earlier` to `later` (NULL when either is NULL)."""
    if dialect_name == "sqlite":
        return f"(julianday({later}) - julianday({earlier}))"
    return f"(EXTRACT(EPOCH FROM (({later}) - ({earlier}))) / 86400.0)"


def now(dialect_name: str) -> str:
    """The current UTC time, comparable with stored timestamps."""
    if dialect_name == "sqlite":
        return "strftime('%Y-%m-%d %H:%M:%f', 'now')"
    return "now()"


def shift_days(expr: str, days: int, dialect_name: str) -> str:
    """A timestamp moved by a whole number of days (negative goes back)."""
    if dialect_name == "sqlite":
        return f"strftime('%Y-%m-%d %H:%M:%f', {expr}, '{days:+d} days')"
    return f"(({expr}) + INTERVAL '{days} days')"


def percentile(
    source: str, groups: Sequence[str], value: str, fraction: float, *, name: str = "value"
) -> str:
    """A subquery: one row per group with the nearest-rank percentile of `value` (median when 0.5).

    `source` is a FROM-able expression (a table, view or parenthesised SELECT with an alias). The median
    of an even count averages the two middle values; other fractions use nearest rank
    (ceil(fraction * n)), the definition BI users get from PERCENTILE_DISC.
    """
    part = ", ".join(groups)
    over = f"PARTITION BY {part} ORDER BY {value}" if groups else f"ORDER BY {value}"
    count_over = f"PARTITION BY {part}" if groups else ""
    if fraction == 0.5:
        pick = "rn IN ((n + 1) / 2, (n + 2) / 2)"
    else:
        tenths = round(fraction * 1000)
        pick = f"rn = ({tenths} * n + 999) / 1000"
    cols = f"{part}, " if groups else ""
    group_by = f" GROUP BY {part}" if groups else ""
    return (
        f"(SELECT {cols}AVG(v) AS {name} FROM ("
        f"SELECT {cols}{value} AS v, ROW_NUMBER() OVER ({over}) AS rn, COUNT(*) OVER ({count_over}) AS n "
        f"FROM {source} WHERE {value} IS NOT NULL) ranked WHERE {pick}{group_by})"
    )
