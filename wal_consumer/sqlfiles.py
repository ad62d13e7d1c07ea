"""Where our SQL lives (the repository's top-level ``sql/`` directory)."""

from __future__ import annotations

from pathlib import Path

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"


def migrations() -> list[tuple[str, str]]:
    """(version, sql) of every migration, in order."""
    files = sorted((SQL_DIR / "migrations").glob("*.sql"))
    return [(path.stem, path.read_text()) for path in files]


def read(name: str) -> str:
    return (SQL_DIR / name).read_text()
