"""The routing atlas's rows: the build writes a problem's trace and branches as they finish (resumable)."""

from __future__ import annotations

import json
from typing import Any

from sqlite_utils import Database

from .txn import write_txn


def atlas_meta(db: Database) -> dict[str, Any]:
    return {r["key"]: json.loads(r["value"]) for r in db["atlas_meta"].rows}


def set_atlas_meta(db: Database, meta: dict[str, Any]) -> None:
    with write_txn(db):
        for key, value in meta.items():
            db["atlas_meta"].insert({"key": key, "value": json.dumps(value)}, replace=True)


def atlas_problem(db: Database, problem_id: str) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM atlas_problems WHERE id = ?", [problem_id]))
    return rows[0] if rows else None


def put_atlas_problem(db: Database, row: dict[str, Any]) -> None:
    with write_txn(db):
        db["atlas_problems"].insert(row, replace=True)


def atlas_branch(db: Database, problem_id: str, kind: str, k: int) -> dict[str, Any] | None:
    rows = list(db.query("SELECT * FROM atlas_branches WHERE problem_id = ? AND kind = ? AND k = ?",
                         [problem_id, kind, k]))
    return rows[0] if rows else None


def put_atlas_branch(db: Database, row: dict[str, Any]) -> None:
    with write_txn(db):
        db["atlas_branches"].insert(row, replace=True)


def atlas_rows(db: Database) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(finished problems, finished branches), in build order."""
    problems = list(db.query("SELECT * FROM atlas_problems WHERE status = 'done' ORDER BY rowid"))
    branches = list(db.query("SELECT * FROM atlas_branches WHERE status = 'done' ORDER BY rowid"))
    return problems, branches
