"""The maze task: layout, round trips, validity of answer slots, scoring, and a training smoke run."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinylens.cli import main
from tinylens.config import make_run_config
from tinylens.errors import ConfigError, TokenError, UnknownNameError
from tinylens.evaluation import evaluate_logits
from tinylens.runs import train
from tinylens.store import Workspace
from tinylens.tasks import MazeTask, make_task
from tinylens.tasks.maze_tokens import PADDING, PATH_END, PATH_START


@pytest.mark.parametrize("generator", ["dfs", "wilson", "kruskal", "percolation"])
@pytest.mark.parametrize("grid", [2, 3, 5])
def test_layout_round_trips_and_solves(generator: str, grid: int) -> None:
    task = MazeTask(grid=grid, generator=generator)
    tokens = task.sample(40, torch.Generator().manual_seed(grid))
    assert tokens.shape == (40, task.seq_len)
    start_id, end_id = task.vocab.index(PATH_START), task.vocab.index(PATH_END)
    assert bool((tokens[:, task.prompt_len - 1] == start_id).all()), "<PATH_START> ends every prompt"
    valid = task.answer_valid(tokens)
    for row, used in zip(tokens, valid, strict=True):
        answer = row[task.answer_positions]
        n_used = int(used.sum())
        assert bool(used[:n_used].all()) and not bool(used[n_used:].any())
        assert int(answer[n_used - 1]) == end_id
        solved = task.solved_maze(row)
        assert n_used == len(solved.path) + 1
        assert torch.equal(task.encode(task.decode(row)), row)
    assert torch.equal(task.solve(tokens[:, : task.prompt_len]), tokens)


def test_sampling_is_seeded() -> None:
    task = MazeTask()
    a = task.sample(10, torch.Generator().manual_seed(1))
    assert torch.equal(a, task.sample(10, torch.Generator().manual_seed(1)))
    assert not torch.equal(a, task.sample(10, torch.Generator().manual_seed(2)))


def test_only_used_answer_slots_are_scored() -> None:
    task = MazeTask(grid=4)
    tokens = task.sample(16, torch.Generator().manual_seed(0))
    # a "model" that predicts every next token exactly, except garbage in the unused slots
    logits = F.one_hot(tokens.roll(-1, dims=1), len(task.vocab)).float() * 50
    unused = ~task.answer_valid(tokens)
    garbage_rows, garbage_slots = unused.nonzero(as_tuple=True)
    logits[garbage_rows, task.answer_positions[garbage_slots] - 1] = 0.0
    result = evaluate_logits(task, tokens, logits)
    assert result.exact == 1.0 and result.loss < 1e-6
    assert result.positions["P0"].count == 16
    assert result.positions[f"P{4 * 4}"].count < 16, "only the longest paths use the last slot"


def test_parse_prompt_pads_and_rejects_bad_prompts() -> None:
    task = MazeTask(grid=3, generator="percolation")
    tokens = task.sample(1, torch.Generator().manual_seed(3))[0]
    words = task.decode(tokens[: task.prompt_len]).split()
    unpadded = " ".join(w for w in words if w != PADDING)
    assert torch.equal(task.parse_prompt(unpadded), tokens[: task.prompt_len])
    assert "(0,0)" in unpadded  # every cell of a connected maze appears in its adjacency list
    with pytest.raises(TokenError, match="off the 3×3 grid"):
        task.parse_prompt(unpadded.replace("(0,0)", "(7,7)", 1))
    with pytest.raises(TokenError):
        task.parse_prompt(unpadded.replace("<PATH_START>", ""))


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="2–20"):
        make_task("maze", {"grid": 1})
    with pytest.raises(UnknownNameError, match="valid choices"):
        make_task("maze", {"generator": "prim"})


def test_a_maze_model_trains(tmp_path: Path) -> None:
    over = {
        "task": {"grid": 3},
        "train": {"steps": 30, "eval_every": 15, "eval_size": 64, "log_every": 5},
    }
    cfg = make_run_config("maze", "tiny", overrides=over)
    result = train(Workspace(tmp_path), cfg, progress=False)
    m = Workspace(tmp_path).run(result.run).metrics()
    assert m["eval/loss"].values[-1] < m["eval/loss"].values[0]
    assert "eval/acc/P0" in m and "train/loss/P0" in m
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main(["eval", result.run, "-w", str(tmp_path), "--n", "20", "--json"])
    generation = json.loads(printed.getvalue())["generation"]
    assert set(generation) == {"exact_path", "valid_path", "target_reached"}
    assert 0 <= generation["exact_path"] <= generation["target_reached"] <= generation["valid_path"] <= 1


def test_generation_metrics_judge_paths() -> None:
    task = MazeTask(grid=4)
    tokens = task.sample(6, torch.Generator().manual_seed(4))
    prompt, answer = tokens[:, : task.prompt_len], tokens[:, task.prompt_len :]
    assert task.generation_metrics(prompt, answer) == {
        "exact_path": 1.0,
        "valid_path": 1.0,
        "target_reached": 1.0,
    }
    end, pad = task.vocab.index(PATH_END), task.vocab.index(PADDING)
    cut = answer.clone()
    for row in cut:  # stop every path one cell early: valid walks that miss the target
        n_used = int((row != pad).sum())
        row[n_used - 2], row[n_used - 1] = end, pad
    assert task.generation_metrics(prompt, cut) == {
        "exact_path": 0.0,
        "valid_path": 1.0,
        "target_reached": 0.0,
    }
    garbage = torch.full_like(answer, task.vocab.index("(3,3)"))
    assert task.generation_metrics(prompt, garbage)["valid_path"] == 0.0
