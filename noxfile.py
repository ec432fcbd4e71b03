"""The test suite on every CPython autopar supports: ``make test-pythons`` runs ``nox``.

Each ``tests`` session installs autopar with its ``test`` extra into a fresh
virtualenv of one CPython and runs pytest there (arguments after ``--`` go to
pytest): ``nox -s tests -p 3.10 3.13 -- -x``.

The interpreters are pyenv's, as on the project's machines and CI:
``$PYENV_ROOT/versions/X.Y.Z/bin/pythonX.Y`` (``PYENV_ROOT`` defaults to
``~/.pyenv``). They are found there even when PATH holds only pyenv's shim, whose
``pythonX.Y`` answers only for the versions ``pyenv global`` names. A version
that is neither there nor on PATH fails its session, with how to install it.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import nox

#: Every CPython the project claims and CI can get, oldest first (.ci/run runs the
#: oldest and the newest after the default suite).
PYTHONS = ["3.10", "3.11", "3.12", "3.13"]

nox.options.sessions = ["tests"]
# A missing interpreter fails (nox's default outside CI is to skip it), and nox never
# downloads one: the project's machines reach only package registries.
nox.options.error_on_missing_interpreters = True
if hasattr(nox.options, "download_python"):
    nox.options.download_python = "never"


def pyenv_python(version: str) -> Path | None:
    """The newest pyenv-installed CPython ``version`` (``X.Y``), or None."""
    root = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    found: list[tuple[int, Path]] = []
    for folder in (root / "versions").glob(f"{version}.*"):
        patch = re.fullmatch(re.escape(version) + r"\.(\d+)", folder.name)  # not 3.13.0t nor 3.10-dev
        exe = folder / "bin" / f"python{version}"
        if patch and os.access(exe, os.X_OK):
            found.append((int(patch.group(1)), exe))
    return max(found)[1] if found else None


def _put_on_path(versions: list[str]) -> None:
    """Put each version's pyenv bin folder first on PATH, so nox finds ``pythonX.Y``."""
    folders: list[str] = []
    for version in versions:
        exe = pyenv_python(version)
        if exe is not None:
            folders.append(str(exe.parent))
        elif "shims" in Path(shutil.which(f"python{version}") or "shims").parts:  # none, or pyenv's shim
            root = os.environ.get("PYENV_ROOT", "~/.pyenv")
            print(
                f"noxfile: CPython {version} not found: no {root}/versions/{version}.*/bin/python{version}, "
                f"and PATH has no python{version} but pyenv's shim; install it with `pyenv install {version}`",
                file=sys.stderr,
            )
    os.environ["PATH"] = os.pathsep.join([*folders, os.environ.get("PATH", "")])


_put_on_path(PYTHONS)


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Install autopar with its test extra and run the default test suite."""
    session.install(".[test]")
    session.run("python", "-m", "pytest", *session.posargs)
