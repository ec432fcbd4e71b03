"""The thread benchmark's work (:mod:`benchmarks.threads`), in a module of its own.

Every function is defined at module level twice: plain (``crc_big``), for the
serial loop and the peers (``ThreadPool``, ``Pool``, joblib), and decorated with
:func:`autopar.auto_parallel` (``auto_crc_big``), for autopar. Both pickle by
reference, so spawn and forkserver workers (and joblib's loky workers) import
them from here. The decorated ones call the plain ones: one more Python call per
item (~0.1 us), nothing next to the 0.5-10 ms an item takes.

Also the loopback server ``socket_wait`` talks to: ``python -m benchmarks.thread_work
serve`` (from the repository root) prints the port it listens on, answers each
request after :data:`SOCKET_DELAY_S`, and exits when its stdin closes, so it never
outlives the benchmark that started it.
"""

from __future__ import annotations

import asyncio
import random
import socket
import sys
import time
import zlib

from autopar import auto_parallel

try:
    import numpy as np
except ImportError:  # numpy_item is then skipped by the benchmark
    np = None  # type: ignore[assignment]

HAS_NUMPY = np is not None

#: zlib.crc32 passes over each 1 MiB item: ~0.33 ms a pass on the 2-core machine.
CRC_PASSES = 3
#: The server's delay before it answers a request.
SOCKET_DELAY_S = 0.005
#: Floats per numpy_item array: np.sort of 50k floats takes ~2 ms.
NUMPY_FLOATS = 50_000
#: gil_bound's loop iterations: ~1 ms of pure Python on the 2-core machine.
GIL_ITERATIONS = 18_000


# -- the work, plain ---------------------------------------------------------------------


def crc_big(item: bytes) -> int:
    """CRC-32 of a 1 MiB item, a few passes (zlib releases the GIL above 5 KiB)."""
    crc = 0
    for _ in range(CRC_PASSES):
        crc = zlib.crc32(item, crc)
    return crc


def compress_big(item: bytes) -> int:
    """Compressed size of a 256 KiB text item at level 6 (zlib releases the GIL)."""
    return len(zlib.compress(item, 6))


def sleep_wait(item: int) -> int:
    """10 ms of waiting."""
    time.sleep(0.01)
    return item


def socket_wait(item: tuple[int, int]) -> int:
    """One request to the loopback server at port ``item[0]``; its answer is ``3 * item[1] + 1``."""
    port, value = item
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(b"%d\n" % value)
        reply = b""
        while not reply.endswith(b"\n"):
            part = conn.recv(64)
            if not part:
                break
            reply += part
    return int(reply)


def numpy_item(seed: int) -> float:
    """Sort 50k random floats made from the seed (numpy releases the GIL while sorting)."""
    values = np.random.default_rng(seed).random(NUMPY_FLOATS)
    return float(np.sort(values)[NUMPY_FLOATS // 2])


def gil_bound(item: int) -> int:
    """~1 ms of pure-Python arithmetic: holds the GIL throughout."""
    acc = item
    for i in range(GIL_ITERATIONS):
        acc = (acc * 31 + i) % 1_000_003
    return acc


def warmup(item: int) -> int:
    """~2 ms of pure Python: enough for autopar to measure this machine's pool costs."""
    return gil_bound(item) + gil_bound(item + 1)


# -- the same, decorated for autopar ---------------------------------------------------------


@auto_parallel
def auto_crc_big(item: bytes) -> int:
    return crc_big(item)


@auto_parallel
def auto_compress_big(item: bytes) -> int:
    return compress_big(item)


@auto_parallel
def auto_sleep_wait(item: int) -> int:
    return sleep_wait(item)


@auto_parallel
def auto_socket_wait(item: tuple[int, int]) -> int:
    return socket_wait(item)


@auto_parallel
def auto_numpy_item(seed: int) -> float:
    return numpy_item(seed)


@auto_parallel
def auto_gil_bound(item: int) -> int:
    return gil_bound(item)


@auto_parallel
def auto_warmup(item: int) -> int:
    return warmup(item)


# -- inputs -------------------------------------------------------------------------------------


def big_blobs(n: int, size: int = 1 << 20, seed: int = 1) -> list[bytes]:
    """``n`` distinct blobs of ``size`` random bytes: rotations of one random block."""
    block = random.Random(seed).randbytes(size + n)
    return [block[i : i + size] for i in range(n)]


def text_blobs(n: int, size: int = 256 << 10, seed: int = 2) -> list[bytes]:
    """``n`` distinct texts of ``size`` bytes (compressing to about half)."""
    rng = random.Random(seed)
    words = [bytes(rng.choices(b"abcdefghijklmnopqrstuvwxyz", k=rng.randint(2, 9))) for _ in range(5000)]
    corpus = b" ".join(rng.choices(words, k=(size + n) // 3))
    corpus = (corpus * (1 + (size + n) // len(corpus)))[: size + n]
    return [corpus[i : i + size] for i in range(n)]


# -- the loopback server ----------------------------------------------------------------------


async def _serve(delay: float) -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            await asyncio.sleep(delay)
            writer.write(b"%d\n" % (3 * int(line) + 1))
            await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    # Serve until stdin closes: the benchmark closes it, and so does its death.
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.buffer.read)
    server.close()
    await server.wait_closed()


def serve(delay: float = SOCKET_DELAY_S) -> None:
    """Answer ``N\\n`` with ``3N+1\\n`` after ``delay`` seconds, until stdin closes."""
    asyncio.run(_serve(delay))


def main(argv: list[str]) -> None:
    if argv[:1] != ["serve"]:
        raise SystemExit("usage: python -m benchmarks.thread_work serve [DELAY_S]")
    serve(float(argv[1]) if len(argv) > 1 else SOCKET_DELAY_S)


if __name__ == "__main__":
    main(sys.argv[1:])
