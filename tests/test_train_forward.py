"""The direct training forward equals the bridge's, and shared-prefix packing equals ordinary rows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tinylens.config import RunConfig, TrainConfig, make_run_config
from tinylens.errors import ConfigError
from tinylens.evaluation import answer_logits, answer_loss, masked_mean
from tinylens.model import build_model
from tinylens.runs import train
from tinylens.store import Workspace
from tinylens.tasks.maze_task import MazeTask, is_held_out
from tinylens.train import Trainer
from tinylens.train_forward import (
    check_direct_forward,
    direct_forward,
    shared_prefix_forward,
    split_shared_prefix,
)

from .helpers import model_cfg, stop_after
from .test_train import all_metrics, assert_same_weights, weights


@pytest.mark.parametrize(
    "arch",
    [
        {},
        {"n_layers": 2, "act_fn": "gelu", "normalization_type": "RMS"},
        {"positional_embedding": "rotary", "normalization_type": "LNPre"},
        {"n_layers": 2, "d_mlp": 0, "normalization_type": None},
    ],
)
def test_direct_forward_equals_the_bridge(arch: dict) -> None:
    model = build_model(model_cfg(**arch), seed=3)
    tokens = torch.randint(0, 12, (5, 18), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(direct_forward(model, tokens), model(tokens), atol=1e-5, rtol=1e-5)
    short = tokens[:, :11]  # shorter than n_ctx
    torch.testing.assert_close(direct_forward(model, short), model(short), atol=1e-5, rtol=1e-5)


def test_direct_forward_refuses_a_model_that_is_not_ours() -> None:
    with pytest.raises(ConfigError, match="one of tinylens's own models"):
        check_direct_forward(torch.nn.Linear(2, 2))


def _maze_batch(k: int, n_groups: int = 6, grid: int = 4) -> tuple[MazeTask, torch.Tensor]:
    task = MazeTask(grid=grid)
    return task, task.sample_grouped(n_groups, k, torch.Generator().manual_seed(5), train=True)


@torch.no_grad()
@pytest.mark.parametrize(
    ("k", "arch"),
    [(1, {}), (3, {}), (4, {}), (4, {"positional_embedding": "rotary", "d_mlp": 0})],
)
def test_shared_prefix_loss_equals_the_separate_sequences_loss(k: int, arch: dict) -> None:
    task, tokens = _maze_batch(k)
    model_over = {"n_layers": 2, **arch}
    cfg = make_run_config("maze", "tiny", overrides={"task": {"grid": 4}, "model": model_over})
    model = build_model(cfg.model, seed=0)
    valid = task.answer_valid(tokens)
    prefix = task.shared_prefix_len
    shared_batch = split_shared_prefix(tokens, k, prefix, task.answer_positions, valid)
    assert shared_batch.segments.shape[2] < task.seq_len - prefix  # cut after the longest path
    pred = shared_batch.answer_logits(shared_prefix_forward(model, shared_batch))
    target = tokens[:, task.answer_positions]
    shared = masked_mean(F.cross_entropy(pred.transpose(1, 2), target, reduction="none"), valid)
    separate = masked_mean(answer_loss(model(tokens), tokens, task), valid)
    # float32 means of ~3.5 nats by two code paths: a few ulps (2.4e-7 each) apart, so a relative
    # bound of ~80 ε; a position off by one moves the loss by 2e-2 or more
    assert abs(shared.item() - separate.item()) <= 1e-5 * abs(separate.item())
    reference = answer_logits(model(tokens), task)
    torch.testing.assert_close(pred[valid], reference[valid], atol=1e-5, rtol=1e-5)


def test_a_segment_never_sees_another_question() -> None:
    task, tokens = _maze_batch(3)
    valid = task.answer_valid(tokens)
    prefix = task.shared_prefix_len
    split = split_shared_prefix(tokens, 3, prefix, task.answer_positions, valid)
    model = build_model(make_run_config("maze", "tiny", overrides={"task": {"grid": 4}}).model, seed=1)
    before = split.answer_logits(shared_prefix_forward(model, split))
    changed = tokens.clone()
    changed[1::3, prefix:] = tokens[0, prefix:]  # rewrite the second question of every maze
    resplit = split_shared_prefix(
        changed, 3, prefix, task.answer_positions, valid | task.answer_valid(changed)
    )
    after = resplit.answer_logits(shared_prefix_forward(model, resplit))
    others = torch.ones(len(tokens), dtype=torch.bool)
    others[1::3] = False
    torch.testing.assert_close(after[others][valid[others]], before[others][valid[others]])


def test_packing_refuses_rows_that_do_not_share_their_prefix() -> None:
    task, tokens = _maze_batch(2)
    valid = task.answer_valid(tokens)
    args = (task.shared_prefix_len, task.answer_positions, valid)
    with pytest.raises(ConfigError, match="groups of 5"):
        split_shared_prefix(tokens, 5, *args)
    with pytest.raises(ConfigError, match="share their first"):
        split_shared_prefix(tokens.roll(1, dims=0), 2, *args)
    with pytest.raises(ConfigError, match="after the shared prefix"):
        split_shared_prefix(tokens, 2, int(task.answer_positions[0]), task.answer_positions, valid)


@pytest.mark.parametrize("train_split", [True, False])
def test_grouped_mazes_share_the_adjacency_list_and_keep_the_split(train_split: bool) -> None:
    task = MazeTask(grid=4)
    tokens = task.sample_grouped(8, 4, torch.Generator().manual_seed(2), train=train_split)
    assert tokens.shape == (32, task.seq_len)
    again = task.sample_grouped(8, 4, torch.Generator().manual_seed(2), train=train_split)
    assert torch.equal(tokens, again)
    prefix = task.shared_prefix_len
    groups = tokens.reshape(8, 4, -1)
    assert bool((groups[:, :, :prefix] == groups[:, :1, :prefix]).all())
    assert len({tuple(group[0, :prefix].tolist()) for group in groups}) == 8  # one maze per group
    for row in tokens:
        solved = task.solved_maze(row)  # a well-formed sequence with the shortest path
        assert is_held_out(solved) != train_split
    queries = {tuple(row[prefix:].tolist()) for row in tokens}
    assert len(queries) > 8  # the queries of a maze differ (drawn independently)


def test_shared_prefix_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="forward = 'direct'"):
        TrainConfig(queries_per_prompt=4)
    with pytest.raises(ConfigError, match="multiple of queries_per_prompt"):
        TrainConfig(queries_per_prompt=3, forward="direct", batch_size=64)
    with pytest.raises(ConfigError, match="no prefix shared"):
        make_run_config(
            "addition", "tiny", overrides={"train": {"forward": "direct", "queries_per_prompt": 2}}
        )
    with pytest.raises(ConfigError, match="is not one of"):
        TrainConfig(forward="fast")


def test_new_train_fields_at_their_defaults_keep_older_run_names() -> None:
    cfg = make_run_config("addition", "tiny")
    data = cfg.to_dict()
    assert "forward" not in data["train"] and "queries_per_prompt" not in data["train"]
    assert RunConfig.from_dict(data).identity == cfg.identity
    direct = make_run_config("addition", "tiny", overrides={"train": {"forward": "direct"}})
    assert direct.to_dict()["train"]["forward"] == "direct"
    assert direct.identity != cfg.identity
    assert RunConfig.from_dict(direct.to_dict()) == direct


SHARED = {
    "task": {"grid": 3},
    "model": {"n_layers": 2},
    "train": {
        "steps": 40, "batch_size": 32, "forward": "direct", "queries_per_prompt": 4,
        "eval_every": 20, "eval_size": 64, "save_every": 7, "log_every": 5,
    },
}  # fmt: skip


def test_shared_prefix_training_learns_and_resumes_bit_identical(tmp_path: Path) -> None:
    cfg = make_run_config("maze", "tiny", overrides=SHARED)
    straight = train(Workspace(tmp_path / "straight"), cfg, progress=False)
    losses = Workspace(tmp_path / "straight").run(straight.run).metrics()["train/loss"].values
    assert losses[-1] < 0.7 * losses[0]

    workspace = Workspace(tmp_path / "stopped")
    run = workspace.create_run(cfg.default_name(), cfg.to_dict(), kind="train")
    trainer = Trainer(run, cfg, progress=False)
    stop_after(trainer, 23)
    assert trainer.fit().status == "interrupted"
    resumed = Trainer(workspace.run(run.name), cfg, progress=False).fit()
    assert resumed.status == "done"
    assert_same_weights(
        weights(tmp_path / "stopped", run.name), weights(tmp_path / "straight", straight.run)
    )
    assert all_metrics(tmp_path / "stopped", run.name) == all_metrics(
        tmp_path / "straight", straight.run
    )
