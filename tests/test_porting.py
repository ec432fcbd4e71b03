"""The README's "Porting from Pool, joblib and mpire" examples run as written.

Every fenced ```python block of that section is written to a script file and run by
a fresh interpreter (cwd the repository, ``PYTHONPATH`` including it), so a block
may define functions at top level and guard its calls with
``if __name__ == "__main__":``: spawn and forkserver workers then import its
``__main__`` from the file, as they would a user's script. Each block runs alone
(nothing leaks from one to the next) and must exit 0; a failure shows the block,
where it is in README.md, and what it printed. The blocks use this test's plan
store (``AUTOPAR_CACHE_DIR`` is inherited).

While the section is missing, the test is skipped, saying so.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SECTION = "## Porting from Pool, joblib and mpire"
#: Seconds one block may run (a spawn pool and a first plan take a few).
BLOCK_TIMEOUT_S = 150

pytestmark = pytest.mark.timeout(BLOCK_TIMEOUT_S + 30)

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})[ \t]*(?P<info>[^`\n]*)$")


def _closes(match: re.Match[str], fence: str) -> bool:
    """True when the fence line ``match`` closes a block opened by ``fence``."""
    found = match["fence"]
    return found[0] == fence[0] and len(found) >= len(fence) and not match["info"].strip()


@dataclass(frozen=True)
class Block:
    """One ```python block: the README line of its opening fence, and its code."""

    line: int
    code: str


def section_lines(text: str, title: str) -> list[tuple[int, str]] | None:
    """The lines of the section headed ``title`` (numbered from 1), up to the next
    heading of the same or a higher level outside code fences; None when absent."""
    level = len(title) - len(title.lstrip("#"))
    found: list[tuple[int, str]] | None = None
    fence: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match is not None and fence is None:
            fence = match["fence"]
        elif match is not None and fence is not None and _closes(match, fence):
            fence = None
        elif fence is None and line.startswith("#"):
            hashes = len(line) - len(line.lstrip("#"))
            if line.rstrip() == title:
                found = []
                continue
            if found is not None and hashes <= level and line[hashes : hashes + 1] == " ":
                break
        if found is not None:
            found.append((number, line))
    return found


def python_blocks(lines: list[tuple[int, str]]) -> list[Block]:
    """The fenced blocks whose info string starts with ``python``, dedented."""
    blocks: list[Block] = []
    opened: tuple[int, str, bool] | None = None  # (line, fence, is python)
    body: list[str] = []
    for number, line in lines:
        match = _FENCE.match(line)
        if opened is None:
            if match is not None:
                info = match["info"].split()
                opened = (number, match["fence"], bool(info) and info[0].lower() == "python")
                body = []
            continue
        if match is not None and _closes(match, opened[1]):
            if opened[2]:
                blocks.append(Block(opened[0], textwrap.dedent("\n".join(body)) + "\n"))
            opened = None
            continue
        body.append(line)
    return blocks


def run_block(block: Block, folder: Path) -> None:
    """Run ``block`` as a script in a fresh interpreter; fail, showing it, unless it exits 0."""
    script = folder / f"readme_porting_line_{block.line}.py"
    script.write_text(block.code, encoding="utf-8")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    process = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a block that hangs is stopped with its workers
    )
    try:
        out, err = process.communicate(timeout=BLOCK_TIMEOUT_S)
        outcome = f"exited with code {process.returncode}"
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
        outcome = f"did not finish in {BLOCK_TIMEOUT_S} s (stopped)"
    if process.returncode == 0:
        return
    msg = (
        f"README.md's block at line {block.line} ({SECTION!r}) {outcome}.\n"
        f"--- the block ---\n{block.code}--- stdout ---\n{out}--- stderr ---\n{err}"
    )
    pytest.fail(msg, pytrace=False)


def _params() -> list[object]:
    text = README.read_text(encoding="utf-8") if README.exists() else ""
    lines = section_lines(text, SECTION)
    if lines is None:
        reason = f"README.md has no section {SECTION!r} yet: nothing to run"
        return [pytest.param(None, id="no-section", marks=pytest.mark.skip(reason=reason))]
    blocks = python_blocks(lines)
    if not blocks:
        return [pytest.param(None, id="no-blocks")]
    return [pytest.param(block, id=f"line{block.line}") for block in blocks]


@pytest.mark.parametrize("block", _params())
def test_readme_porting_block_runs(block: Block | None, tmp_path: Path) -> None:
    if block is None:
        pytest.fail(f"README.md's section {SECTION!r} has no ```python block to run", pytrace=False)
    run_block(block, tmp_path)


# -- the extraction and the runner themselves ---------------------------------------------------

_SAMPLE = """\
# Title

## Before

```python
print("not this one")
```

## Porting from Pool, joblib and mpire

Text.

```python
def f(x):
    return x
```

```sh
## a shell comment, not a heading
make test
```

### From joblib

1. A step:

   ```python
   if __name__ == "__main__":
       print(1)
   ```

````python
print("```")
````

## After

```python
print("nor this one")
```
"""


def test_only_the_sections_python_blocks_are_taken() -> None:
    lines = section_lines(_SAMPLE, SECTION)
    assert lines is not None
    blocks = python_blocks(lines)
    assert [block.line for block in blocks] == [13, 27, 32]
    assert blocks[0].code == "def f(x):\n    return x\n"
    assert blocks[1].code == 'if __name__ == "__main__":\n    print(1)\n'
    assert blocks[2].code == 'print("```")\n'
    assert section_lines(_SAMPLE, "## Missing") is None


def test_a_block_runs_as_a_script_so_spawn_workers_import_it(tmp_path: Path) -> None:
    code = textwrap.dedent(
        """\
        from autopar import auto_parallel

        @auto_parallel(start_method="spawn")
        def square(x):
            return x * x

        if __name__ == "__main__":
            assert square.map(range(20), n_jobs=2, chunksize=5) == [x * x for x in range(20)]
        """
    )
    run_block(Block(1, code), tmp_path)


def test_a_failing_block_is_shown_with_its_output(tmp_path: Path) -> None:
    code = 'print("about to fail")\nraise ValueError("the example is wrong")\n'
    with pytest.raises(pytest.fail.Exception) as info:
        run_block(Block(7, code), tmp_path)
    message = str(info.value)
    assert "block at line 7" in message
    assert "exited with code 1" in message
    assert code in message
    assert "about to fail" in message
    assert "ValueError: the example is wrong" in message
