"""Shared fixtures: offline Hugging Face, a trained tiny run, tiny addition and maze studies."""

from __future__ import annotations

import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest
import torch

from tinylens.runs import train
from tinylens.store import Run, Workspace
from tinylens.studies import run_study

from .helpers import run_cfg


def pytest_report_header() -> str:
    """Which of ATen's CPU kernel paths the numbers come from (``make test-kernels`` picks
    another with ATEN_CPU_CAPABILITY), and the BLAS threads."""
    return (
        f"torch {torch.__version__}, CPU kernels {torch.backends.cpu.get_cpu_capability()}, "
        f"{torch.get_num_threads()} threads"
    )


@pytest.fixture(scope="session")
def trained_workspace(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A workspace holding one short tiny run: (workspace root, run name)."""
    root = tmp_path_factory.mktemp("ws")
    result = train(Workspace(root), run_cfg(steps=60), progress=False)
    return root, result.run


@pytest.fixture(scope="session")
def study_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The addition study's run folder, made once with the tiny preset (seconds)."""
    return run_study("addition", Workspace(tmp_path_factory.mktemp("study")), "tiny", progress=False)


@pytest.fixture(scope="session")
def maze_study_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The maze study's run folder, made once with the tiny preset (3×3 mazes, seconds)."""
    return run_study("maze", Workspace(tmp_path_factory.mktemp("maze-study")), "tiny", progress=False)


@pytest.fixture(scope="session")
def seqcont_study_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The seqcont study's run folder, made once with the tiny preset (a 2-layer model, seconds)."""
    workspace = Workspace(tmp_path_factory.mktemp("seqcont-study"))
    return run_study("seqcont", workspace, "tiny", progress=False)


@pytest.fixture(scope="session")
def regions_study_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The regions study's run folder, made once with the tiny preset (two 2-layer widths)."""
    workspace = Workspace(tmp_path_factory.mktemp("regions-study"))
    return run_study("regions", workspace, "tiny", progress=False)


@pytest.fixture(scope="session")
def inversion_study_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The inversion study's run folder, made once with the tiny preset (two probed models and
    two decoders, a few steps each)."""
    workspace = Workspace(tmp_path_factory.mktemp("inversion-study"))
    return run_study("inversion", workspace, "tiny", progress=False)
