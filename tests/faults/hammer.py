"""One of several processes planning on one store from several threads at once.

``python -m tests.faults.hammer INDEX THREADS``; exits non-zero on any error.
"""

from __future__ import annotations

import sys
import threading
import warnings

from tests import workloads


def main() -> None:
    index, threads = int(sys.argv[1]), int(sys.argv[2])
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for k in range(6):
                n = 2 ** (3 + (index + t + k) % 12)  # many size buckets: many writes
                assert workloads.add_one.map(range(n)) == [x + 1 for x in range(n)]
                workloads.add_one.plan(range(n))
        except BaseException as exc:  # noqa: BLE001 - reported through the exit code
            errors.append(exc)

    warnings.simplefilter("ignore")  # a lock timeout may warn; only errors count here
    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    if errors:
        print(repr(errors[0]), file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
