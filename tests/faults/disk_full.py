"""Plan many workloads while the file-size limit stops the database from growing.

``python -m tests.faults.disk_full``: a real "disk full" (EFBIG) for this process
only. Exits 0 when every .map was right and exactly one CacheWarning was shown.
"""

from __future__ import annotations

import resource
import signal
import sys
import warnings
from pathlib import Path

from autopar import CacheWarning, get_cache_dir
from tests import workloads


def main() -> None:
    assert workloads.add_one.map(range(100)) == list(range(1, 101))  # the store is open
    biggest = max(p.stat().st_size for p in Path(get_cache_dir()).iterdir() if p.is_file())
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # fail writes with EFBIG instead of dying
    resource.setrlimit(resource.RLIMIT_FSIZE, (biggest + 1024, biggest + 1024))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k in range(3, 20):
            n = 2**k
            assert workloads.add_one.map(range(n)) == [x + 1 for x in range(n)]
    cache_warnings = [w for w in caught if issubclass(w.category, CacheWarning)]
    print(f"{len(cache_warnings)} warning(s): {[str(w.message) for w in cache_warnings]}")
    sys.exit(0 if len(cache_warnings) == 1 else 3)


if __name__ == "__main__":
    main()
