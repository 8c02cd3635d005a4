"""The wheel users install holds every file the package reads, not only the Python modules."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "tinylens"


def _data_files() -> set[str]:
    """The package's files that are not Python source, as paths inside the wheel."""
    return {
        path.relative_to(PACKAGE.parent).as_posix()
        for path in PACKAGE.rglob("*")
        if path.is_file() and path.suffix not in (".py", ".pyc") and "__pycache__" not in path.parts
    }


def test_the_package_has_data_files_to_check() -> None:
    files = _data_files()
    assert "tinylens/explorer/static/index.html" in files
    assert "tinylens/tasks/data/seqcont_words.txt" in files


def test_the_wheel_holds_every_file_the_package_reads(tmp_path: Path) -> None:
    """``pip wheel .`` (what ``pip install .`` builds) packs the explorer's pages and the task
    data beside the modules; an editable install would hide a file the wheel lacks."""
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if built.returncode != 0 and "No module named" in built.stderr:
        pytest.skip(f"cannot build a wheel here: {built.stderr.strip().splitlines()[-1]}")
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("tinylens-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert not _data_files() - names, f"missing from the wheel: {sorted(_data_files() - names)}"
    modules = {p.relative_to(PACKAGE.parent).as_posix() for p in PACKAGE.rglob("*.py")}
    assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"
