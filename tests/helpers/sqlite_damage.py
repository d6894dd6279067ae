"""Damaging an SQLite datastore file on purpose, for the tests of issue 17 item 4 (a malformed
store refuses writes). Shared by the datastore and CLI tiers; on pytest's pythonpath."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def corrupt_oldest_changes(db: Path) -> None:
    """Break the header of the leftmost leaf page of the change-log (its oldest rows): a write
    that never reads that page goes ahead on it (as `tortie delete` did, issue 17 item 4);
    ``PRAGMA quick_check`` finds it."""
    c = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    (root,) = c.execute("SELECT rootpage FROM sqlite_master WHERE name = 'changes'").fetchone()
    c.close()
    data = bytearray(db.read_bytes())
    size = int.from_bytes(data[16:18], "big")
    page = root
    while True:
        base = (page - 1) * size
        header = base + (100 if page == 1 else 0)
        if data[header] in (0x0A, 0x0D):  # a leaf page
            break
        first_cell = int.from_bytes(data[header + 12 : header + 14], "big")
        page = int.from_bytes(data[base + first_cell : base + first_cell + 4], "big")
    assert page != root, "the change-log fits in one page: write more"
    data[header] = 0xFF  # no such page type
    db.write_bytes(bytes(data))
