"""Where the WeCom ``kf/sync_msg`` cursor of each kf account (open_kfid) is kept between pulls and restarts.

``CursorStore`` is the whole contract the puller (``router.edges.wecom_sync``) needs: ``get_cursor``
(None: never pulled) and ``set_cursor``, which must be durable when it returns — the puller calls it
only after the batch before it was handed on and committed, so a crash between the two re-delivers
that batch (at least once) and never skips it.

``SqliteCursorStore`` keeps the cursors in one table, ``wecom_sync_cursors``, of a SQLite file in WAL
mode. The file may be the daemon's own database: the table is created with ``IF NOT EXISTS`` and the
file's ``PRAGMA user_version`` (the main store's schema version) is never read or written.
``synchronous=FULL`` by default, like the main store: a set cursor survives a power cut. One
connection guarded by a lock; each call is one short statement.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

MAX_CURSOR_BYTES = 64  # WeCom: "不多于64字节"
MAX_OPEN_KFID_BYTES = 64


class CursorStore(Protocol):
    """Per-account sync cursors; see the module docstring."""

    def get_cursor(self, open_kfid: str) -> str | None: ...

    def set_cursor(self, open_kfid: str, cursor: str) -> None: ...


def _check(name: str, value: object, max_bytes: int) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise ValueError(f"{name} is {size} bytes; WeCom's are at most {max_bytes}")
    return value


class SqliteCursorStore:
    """``CursorStore`` in a SQLite file (see the module docstring). ``synchronous``: FULL or NORMAL."""

    def __init__(self, path: str | Path, *, synchronous: str = "FULL") -> None:
        if synchronous not in ("FULL", "NORMAL"):
            raise ValueError(f"synchronous must be 'FULL' or 'NORMAL', got {synchronous!r}")
        self.path = str(path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={synchronous}")
            self._db.execute("PRAGMA busy_timeout=5000")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS wecom_sync_cursors ("
                " open_kfid TEXT PRIMARY KEY, cursor TEXT NOT NULL)"
            )
        except sqlite3.DatabaseError:
            self._db.close()
            raise

    def get_cursor(self, open_kfid: str) -> str | None:
        _check("open_kfid", open_kfid, MAX_OPEN_KFID_BYTES)
        with self._lock:
            row = self._db.execute(
                "SELECT cursor FROM wecom_sync_cursors WHERE open_kfid = ?", (open_kfid,)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_cursor(self, open_kfid: str, cursor: str) -> None:
        _check("open_kfid", open_kfid, MAX_OPEN_KFID_BYTES)
        _check("cursor", cursor, MAX_CURSOR_BYTES)
        with self._lock:
            self._db.execute(
                "INSERT INTO wecom_sync_cursors (open_kfid, cursor) VALUES (?, ?)"
                " ON CONFLICT(open_kfid) DO UPDATE SET cursor = excluded.cursor",
                (open_kfid, cursor),
            )

    def cursors(self) -> dict[str, str]:
        """Every saved cursor by open_kfid (for inspection and tests)."""
        with self._lock:
            return {
                str(k): str(v)
                for k, v in self._db.execute("SELECT open_kfid, cursor FROM wecom_sync_cursors")
            }

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> SqliteCursorStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
