"""A sweep's results in one SQLite file: one row per cell, one per (fact, kind, layer) of tracing.

Why SQLite rather than DuckDB: it ships with Python (no dependency), each cell is written in its
own transaction (a crash or Ctrl-C between cells leaves a consistent file, never half a row), the
primary key makes a second write of the same cell impossible, and a sweep's rows are few (tens of
thousands) so a column store buys nothing. Only the driver writes; workers return rows to it.

Tables: ``meta`` (the sweep's settings), ``facts``, ``traces`` (tracing effect per fact, kind and
layer at the last subject token), ``trace_runs`` (per fact: clean/corrupted scores, seconds, worker),
``cells`` (one row per edit: every metric as a column, plus all of them as JSON), ``errors``.
"""

from __future__ import annotations

import fcntl
import json
import os
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from knowscope.facts import Fact
from knowscope.sweep.grid import fact_id

SCHEMA_VERSION = 1

#: the per-cell metrics stored as columns (all of a cell's values are also in ``metrics`` as JSON)
METRIC_COLUMNS = (
    "efficacy_score", "efficacy_magnitude", "paraphrase_score", "paraphrase_magnitude",
    "neighborhood_score", "neighborhood_magnitude", "neighborhood_score_all", "rewrite_score",
    "p_new", "p_true", "p_new_pre", "rewrite_acc", "rephrase_acc", "locality_acc", "locality_acc_all",
    "portability_acc", "fluency", "update_norm",
)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS facts (fact INTEGER PRIMARY KEY, fact_id TEXT NOT NULL, subject TEXT NOT NULL,
    relation_id TEXT, prompt TEXT NOT NULL, target_true TEXT NOT NULL, target_new TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS traces (fact INTEGER NOT NULL, kind TEXT NOT NULL, layer INTEGER NOT NULL,
    effect REAL, PRIMARY KEY (fact, kind, layer));
CREATE TABLE IF NOT EXISTS trace_runs (fact INTEGER PRIMARY KEY, high REAL, low REAL, position INTEGER,
    seconds REAL, worker TEXT, finished REAL);
CREATE TABLE IF NOT EXISTS cells (cell_id TEXT PRIMARY KEY, fact INTEGER NOT NULL, fact_id TEXT NOT NULL,
    method TEXT NOT NULL, layer INTEGER NOT NULL, layers TEXT NOT NULL, seed INTEGER NOT NULL,
    fingerprint TEXT NOT NULL, hparams_hash TEXT NOT NULL,
    {", ".join(f"{c} REAL" for c in METRIC_COLUMNS)},
    metrics TEXT NOT NULL, seconds REAL, edit_seconds REAL, worker TEXT, finished REAL);
CREATE TABLE IF NOT EXISTS errors (job TEXT NOT NULL, message TEXT NOT NULL, worker TEXT, at REAL);
"""


class StoreBusyError(RuntimeError):
    """Another process is writing this sweep store."""


class SettingsMismatchError(ValueError):
    """The store holds a sweep with other settings."""


class SweepStore:
    """Open (or create) a sweep store. ``writer=True`` takes an exclusive lock for the whole run."""

    def __init__(self, path: str | os.PathLike[str], writer: bool = False) -> None:
        self.path = Path(path)
        if not writer and not self.path.is_file():
            raise FileNotFoundError(f"no sweep store at {self.path}")
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a folder; a sweep store is one file (e.g. sweep.sqlite)")
        self._lock_file = None
        if writer:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = open(self.path.with_name(self.path.name + ".lock"), "w")  # noqa: SIM115
            try:
                fcntl.flock(self._lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self._lock_file.close()
                raise StoreBusyError(f"{self.path} is being written by another sweep; wait for it to finish") from None
        try:
            self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if writer:
                self.conn.execute("PRAGMA journal_mode=WAL")
                self.conn.execute("PRAGMA synchronous=FULL")
                self.conn.executescript(_SCHEMA)
            else:
                names = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
                if "cells" not in names or "meta" not in names:
                    raise ValueError(f"{self.path} is not a knowscope sweep store")
        except sqlite3.DatabaseError as exc:
            self.close()
            raise ValueError(f"{self.path} is not a knowscope sweep store ({exc})") from None

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        conn = getattr(self, "conn", None)
        if conn is not None:
            conn.close()
            self.conn = None  # type: ignore[assignment]
        if self._lock_file is not None:
            fcntl.flock(self._lock_file, fcntl.LOCK_UN)
            self._lock_file.close()
            self._lock_file = None

    def __enter__(self) -> SweepStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # ------------------------------------------------------------------ settings
    @property
    def settings(self) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='settings'").fetchone()
        return json.loads(row[0]) if row else None

    def claim(self, settings: dict[str, Any], facts: Sequence[Fact]) -> None:
        """Write ``settings`` and the facts into a new store, or check they equal the stored ones."""
        settings = json.loads(json.dumps(settings, sort_keys=True))  # as stored: tuples become lists
        stored = self.settings
        if stored is not None:
            if stored != settings:
                diff = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
                raise SettingsMismatchError(
                    f"{self.path} holds a sweep with other settings ({', '.join(diff)} differ); give another "
                    "--store, or the same settings to continue it")
            return
        with self._transaction() as c:
            c.execute("INSERT INTO meta VALUES ('settings', ?)", (json.dumps(settings, sort_keys=True),))
            c.execute("INSERT INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            c.execute("INSERT INTO meta VALUES ('created', ?)", (repr(time.time()),))
            c.executemany("INSERT INTO facts VALUES (?, ?, ?, ?, ?, ?, ?)", [
                (i, fact_id(f, i), f.subject, f.relation_id, f.prompt, f.target_true, f.target_new)
                for i, f in enumerate(facts)])

    # ------------------------------------------------------------------ writes (driver only)
    def done_cells(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT cell_id FROM cells")}

    def traced_facts(self) -> set[int]:
        return {int(r[0]) for r in self.conn.execute("SELECT fact FROM trace_runs")}

    def add_cell(self, row: dict[str, Any]) -> bool:
        """Insert one cell's row; ``False`` (and nothing written) if the cell is already stored."""
        cols = ["cell_id", "fact", "fact_id", "method", "layer", "layers", "seed", "fingerprint", "hparams_hash",
                *METRIC_COLUMNS, "metrics", "seconds", "edit_seconds", "worker", "finished"]
        values = [row.get(c) for c in cols[:9]]
        values[5] = json.dumps(row["layers"])
        values += [_num(row["metrics"].get(c)) for c in METRIC_COLUMNS]
        values += [json.dumps(row["metrics"], sort_keys=True), row.get("seconds"), row.get("edit_seconds"),
                   row.get("worker"), time.time()]
        try:
            with self._transaction() as c:
                c.execute(f"INSERT INTO cells ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})", values)
        except sqlite3.IntegrityError:
            return False
        return True

    def add_trace(self, fact: int, result: dict[str, Any]) -> bool:
        """Insert one fact's tracing effects (all kinds and layers) in one transaction."""
        try:
            with self._transaction() as c:
                c.execute("INSERT INTO trace_runs VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (fact, result["high"], result["low"], result["position"], result["seconds"],
                           result.get("worker"), time.time()))
                c.executemany("INSERT INTO traces VALUES (?, ?, ?, ?)", [
                    (fact, kind, layer, _num(v)) for kind, values in result["effects"].items()
                    for layer, v in enumerate(values)])
        except sqlite3.IntegrityError:
            return False
        return True

    def add_error(self, job: str, message: str, worker: str | None) -> None:
        with self._transaction() as c:
            c.execute("INSERT INTO errors VALUES (?, ?, ?, ?)", (job, message[:2000], worker, time.time()))

    # ------------------------------------------------------------------ reads
    def facts_table(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM facts ORDER BY fact")]

    def cells(self) -> list[dict[str, Any]]:
        out = []
        for r in self.conn.execute("SELECT * FROM cells ORDER BY method, seed, fact, layer"):
            d = dict(r)
            d["layers"] = json.loads(d["layers"])
            d["metrics"] = json.loads(d["metrics"])
            out.append(d)
        return out

    def traces(self) -> dict[int, dict[str, dict[int, float | None]]]:
        """``{fact: {kind: {layer: effect}}}``."""
        out: dict[int, dict[str, dict[int, float | None]]] = {}
        for r in self.conn.execute("SELECT fact, kind, layer, effect FROM traces"):
            out.setdefault(int(r[0]), {}).setdefault(r[1], {})[int(r[2])] = r[3]
        return out

    def trace_runs(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM trace_runs ORDER BY fact")]

    def errors(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM errors ORDER BY at")]


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return None if x != x else x  # NaN → NULL
