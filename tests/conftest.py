"""Shared fixtures: offline Hugging Face, a trained tiny run, a tiny addition study."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest

from tinylens.runs import train
from tinylens.store import Run, Workspace
from tinylens.studies.addition import run_addition_study

from .helpers import run_cfg


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A workspace holding one short tiny run: (workspace root, run name)."""
    root = tmp_path_factory.mktemp("ws")
    result = train(Workspace(root), run_cfg(steps=60), progress=False)
    return root, result.run


@pytest.fixture(scope="session")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The addition study's run folder, made once with the tiny preset (seconds)."""
    return run_addition_study(Workspace(tmp_path_factory.mktemp("study")), "tiny", progress=False)
