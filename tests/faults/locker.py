"""Hold the plan database's write lock for a while: ``python -m tests.faults.locker DB SECONDS``."""

from __future__ import annotations

import sqlite3
import sys
import time


def main() -> None:
    db, seconds = sys.argv[1], float(sys.argv[2])
    con = sqlite3.connect(db, timeout=5, isolation_level=None)
    con.execute("BEGIN EXCLUSIVE")
    print("locked", flush=True)
    time.sleep(seconds)
    con.execute("ROLLBACK")


if __name__ == "__main__":
    main()
