"""The SQL building blocks of the views give the same answers on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from connector.warehouse import sqlviews
from connector.warehouse.models import UTCDateTime

metadata = sa.MetaData()
sample = sa.Table(
    "sqlviews_sample",
    metadata,
    sa.Column("g", sa.String),
    sa.Column("x", sa.Float),
    sa.Column("ts", UTCDateTime()),
)
ROWS = [
    ("a", 1.0, datetime(2026, 11, 22, 23, 30, tzinfo=UTC)),  # a Sunday
    ("a", 2.0, datetime(2026, 11, 23, 0, 0, tzinfo=UTC)),  # the next Monday
    ("a", 10.0, datetime(2026, 11, 1, 12, 0, tzinfo=UTC)),
    ("a", 4.0, datetime(2026, 10, 31, 12, 0, tzinfo=UTC)),
    ("b", 5.0, datetime(2026, 1, 1, 0, 0, tzinfo=UTC)),
    ("b", None, datetime(2026, 1, 2, 0, 0, tzinfo=UTC)),
]


@pytest.fixture
def loaded(engine: Engine) -> Engine:
    metadata.create_all(engine)
    with engine.begin() as conn:
        conn.execute(sample.insert(), [dict(zip(("g", "x", "ts"), r, strict=True)) for r in ROWS])
    return engine


def as_date(value: object) -> date:
    return value if isinstance(value, date) else date.fromisoformat(str(value))


def test_week_and_month_start(loaded: Engine) -> None:
    d = loaded.dialect.name
    sql = (
        f"SELECT {sqlviews.week_start('ts', d)}, {sqlviews.month_start('ts', d)} "
        "FROM sqlviews_sample ORDER BY ts"
    )
    with loaded.connect() as conn:
        got = [(as_date(w), as_date(m)) for w, m in conn.execute(sa.text(sql))]
    assert got == [
        (date(2025, 12, 29), date(2026, 1, 1)),
        (date(2025, 12, 29), date(2026, 1, 1)),
        (date(2026, 10, 26), date(2026, 10, 1)),
        (date(2026, 10, 26), date(2026, 11, 1)),
        (date(2026, 11, 16), date(2026, 11, 1)),
        (date(2026, 11, 23), date(2026, 11, 1)),
    ]


def test_days_between_and_shift(loaded: Engine) -> None:
    d = loaded.dialect.name
    later = sqlviews.shift_days("ts", 3, d)
    sql = f"SELECT {sqlviews.days_between(later, 'ts', d)} FROM sqlviews_sample WHERE g = 'a' AND x = 1.0"
    with loaded.connect() as conn:
        assert conn.execute(sa.text(sql)).scalar_one() == pytest.approx(3.0)
        ten_years_ago = sqlviews.shift_days(sqlviews.now(d), -3650, d)
        query = f"SELECT count(*) FROM sqlviews_sample WHERE ts > {ten_years_ago}"
        recent = conn.execute(sa.text(query)).scalar_one()
    assert recent == len(ROWS)


@pytest.mark.parametrize(("fraction", "expected_a"), [(0.5, 3.0), (0.9, 10.0), (0.25, 1.0)])
def test_percentile_per_group(loaded: Engine, fraction: float, expected_a: float) -> None:
    sub = sqlviews.percentile("sqlviews_sample", ["g"], "x", fraction, name="p")
    with loaded.connect() as conn:
        got: dict[Any, Any] = dict(conn.execute(sa.text(f"SELECT g, p FROM {sub} q ORDER BY g")).all())
    # a: 1, 2, 4, 10 -> median (2 + 4) / 2; b has a single value, NULLs are ignored.
    assert got == {"a": pytest.approx(expected_a), "b": pytest.approx(5.0)}


def test_percentile_without_groups(loaded: Engine) -> None:
    sub = sqlviews.percentile("sqlviews_sample", [], "x", 0.5)
    with loaded.connect() as conn:
        assert conn.execute(sa.text(f"SELECT value FROM {sub} q")).scalar_one() == pytest.approx(4.0)
