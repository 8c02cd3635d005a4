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
from tinylens.evaluation import evaluate_logits, greedy_answer
from tinylens.runs import train
from tinylens.store import Workspace
from tinylens.tasks import MazeTask, make_task
from tinylens.tasks.maze import wall_list
from tinylens.tasks.maze_task import is_held_out
from tinylens.tasks.maze_tokens import PADDING, PATH_END, PATH_START, coord_token, parse_coord


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
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        main(["eval", result.run, "-w", str(tmp_path), "--n", "5"])
    text = printed.getvalue()
    assert "exact path (greedy decoding)" in text
    assert "nan" not in text  # slots no path reaches print "-"
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


def problem_key(task: MazeTask, row: torch.Tensor) -> tuple:
    solved = task.solved_maze(row)
    return (solved.maze.down.tobytes(), solved.maze.right.tobytes(), solved.origin, solved.target)


def test_held_out_mazes_never_appear_in_training() -> None:
    # 3×3 has ~6,000 problems, so 2,000 training draws would hit many held-out ones by chance
    task = MazeTask(grid=3)
    train_keys = {problem_key(task, r) for r in task.sample(2000, torch.Generator(), train=True)}
    eval_rows = task.sample(300, torch.Generator().manual_seed(1))
    eval_keys = {problem_key(task, r) for r in eval_rows}
    assert len(eval_keys) > 50
    assert not train_keys & eval_keys
    assert all(is_held_out(task.solved_maze(r)) for r in eval_rows)


def test_connection_labels_follow_the_wall_list() -> None:
    task = MazeTask(grid=4)
    tokens = task.sample(5, torch.Generator().manual_seed(2))
    labels = task.connection_labels(tokens)
    assert labels.shape == (5, 24) and labels.dtype == torch.bool
    for row, lab in zip(tokens, labels, strict=True):
        maze = task.solved_maze(row).maze
        expected = [maze.connected(a, b) for a, b in wall_list(4)]
        assert lab.tolist() == expected
        assert int(lab.sum()) == 15  # a spanning tree of 16 cells


@pytest.mark.parametrize("grid", [2, 3, 5])
def test_next_steps_match_a_brute_force_reading(grid: int) -> None:
    task = MazeTask(grid=grid)
    tokens = task.sample(12, torch.Generator().manual_seed(grid))
    steps = task.next_steps(tokens)
    words = [task.decode(row).split() for row in tokens]
    for b, row_words in enumerate(words):
        solved = task.solved_maze(tokens[b])
        queries = [task.prompt_len + k for k in range(len(solved.path) - 1)]
        assert steps.query[b].nonzero().flatten().tolist() == queries
        in_adjlist = range(row_words.index("<ADJLIST_START>") + 1, row_words.index("<ADJLIST_END>"))
        for k, q in enumerate(queries):
            here = solved.path[k]
            assert parse_coord(row_words[q]) == here
            joined = set(solved.maze.neighbours(here))
            beside = {
                (here[0] + dr, here[1] + dc)
                for dr, dc in ((1, 0), (-1, 0), (0, 1), (0, -1))
                if 0 <= here[0] + dr < grid and 0 <= here[1] + dc < grid
            } - joined
            cell_at = {p: parse_coord(row_words[p]) for p in in_adjlist}
            valid = [p for p in in_adjlist if cell_at[p] in joined]
            invalid = [p for p in in_adjlist if cell_at[p] in beside]
            assert steps.valid_keys[b, q].nonzero().flatten().tolist() == valid
            assert steps.invalid_keys[b, q].nonzero().flatten().tolist() == invalid
            allowed = {task.vocab[v] for v in steps.allowed[b, q].nonzero().flatten()}
            assert allowed == {coord_token(c) for c in joined}
            assert coord_token(solved.path[k + 1]) in allowed
        assert not steps.valid_keys[b, ~steps.query[b]].any()


def test_greedy_decoding_stops_each_row_at_path_end() -> None:
    """Rows that wrote <PATH_END> are not run again and are padded; the rest go on."""
    task = MazeTask(grid=3)
    end, pad = task.answer_end
    batch_sizes: list[int] = []

    class Scripted(torch.nn.Module):
        """Writes <PATH_END> at step 1 in even rows (by prompt parity), step 3 in odd rows."""

        def forward(self, seq: torch.Tensor) -> torch.Tensor:
            batch_sizes.append(seq.shape[0])
            step = seq.shape[1] - task.prompt_len
            odd = seq[:, 0] % 2 == 1
            token = torch.where((odd & (step == 3)) | (~odd & (step == 1)), end, 0)
            logits = torch.zeros(seq.shape[0], seq.shape[1], task.d_vocab)
            logits[torch.arange(seq.shape[0]), -1, token] = 1.0
            return logits

    prompt = torch.zeros(4, task.prompt_len, dtype=torch.long)
    prompt[:, 0] = torch.tensor([0, 1, 2, 3])
    answer = greedy_answer(Scripted(), task, prompt)
    assert answer.shape == (4, len(task.answer_positions))
    assert answer[0].tolist()[:3] == [0, end, pad] and (answer[0, 2:] == pad).all()
    assert answer[1].tolist()[:5] == [0, 0, 0, end, pad] and (answer[1, 4:] == pad).all()
    assert batch_sizes == [4, 4, 2, 2]  # then every row is done: no further forward passes
