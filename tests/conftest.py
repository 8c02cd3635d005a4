"""Shared fixtures: offline Hugging Face, a trained tiny run."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest

from tinylens.runs import train
from tinylens.store import Workspace

from .helpers import run_cfg


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A workspace holding one short tiny run: (workspace root, run name)."""
    root = tmp_path_factory.mktemp("ws")
    result = train(Workspace(root), run_cfg(steps=60), progress=False)
    return root, result.run
