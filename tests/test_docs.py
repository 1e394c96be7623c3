"""docs/warehouse.md is the data dictionary BI users read: it must name every table, column and view."""

from __future__ import annotations

import re
from pathlib import Path

import sqlalchemy as sa

from connector.warehouse.engine import make_engine, migrate
from connector.warehouse.models import Base

DOC = Path(__file__).resolve().parents[1] / "docs" / "warehouse.md"


def documented() -> dict[str, set[str]]:
    """Section heading (`### \\`name\\``) -> the column names in its table rows."""
    sections: dict[str, set[str]] = {}
    current: set[str] | None = None
    for line in DOC.read_text(encoding="utf-8").splitlines():
        heading = re.match(r"^###\s+`([a-z_]+)`", line)
        if heading:
            current = sections.setdefault(heading.group(1), set())
            continue
        cell = re.match(r"^\|\s*`([a-z_0-9]+)`\s*\|", line)
        if cell and current is not None:
            current.add(cell.group(1))
    return sections


def test_every_table_and_column_is_documented() -> None:
    docs = documented()
    missing = []
    for name, table in Base.metadata.tables.items():
        if name not in docs:
            missing.append(f"table {name}")
            continue
        missing.extend(f"{name}.{column.name}" for column in table.columns if column.name not in docs[name])
    assert not missing, f"add to docs/warehouse.md: {', '.join(missing)}"


def test_documented_columns_exist() -> None:
    # A column renamed in the models but not in the docs would otherwise linger there.
    docs = documented()
    tables = Base.metadata.tables
    stale = [
        f"{name}.{col}"
        for name, cols in docs.items()
        if name in tables
        for col in cols
        if col not in tables[name].columns
    ]
    assert not stale, f"documented but not in the models: {', '.join(stale)}"


def test_every_view_is_documented(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'wh.db'}")
    try:
        migrate(engine)
        views = set(sa.inspect(engine).get_view_names())
    finally:
        engine.dispose()
    missing = sorted(views - set(documented()))
    assert not missing, f"add these views to docs/warehouse.md: {', '.join(missing)}"
