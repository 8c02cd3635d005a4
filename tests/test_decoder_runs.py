"""Decoder runs: training for any run, resuming bit-identically, reuse, and the `invert` commands."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from tinylens import decoder_runs
from tinylens.analysis.inversion import EPSILON
from tinylens.config import make_run_config
from tinylens.decoder import InversionDecoder
from tinylens.decoder_runs import (
    DecoderRunConfig,
    DecoderTrainConfig,
    DecoderTrainer,
    decoder_run_config,
    decoder_runs_for,
    load_decoder,
    train_decoder,
)
from tinylens.errors import CheckpointError, ConfigError, TinylensError
from tinylens.runs import load_trained, train
from tinylens.store import Run, Workspace, load_tensors
from tinylens.train import DivergenceError

from .helpers import run_cfg
from .test_cli import run_cli

SITES = ("embed", "L0.head1", "L0.resid_post")


def _train_cfg(**overrides: object) -> DecoderTrainConfig:
    base: dict[str, object] = {
        "steps": 12,
        "batch_size": 16,
        "eval_every": 6,
        "eval_queries": 2,
        "eval_per_setting": 2,
        "save_every": 3,
        "log_every": 2,
        "warmup_steps": 2,
        "precision": "fp32",
    }
    return DecoderTrainConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _config(probed, **train: object) -> DecoderRunConfig:
    return decoder_run_config(
        probed, sites=SITES, train=_train_cfg(**train), d_model=32, n_layers=1, n_cond_blocks=1
    )


@pytest.fixture(scope="module")
def probed_ws(tmp_path_factory: pytest.TempPathFactory) -> tuple[Workspace, str]:
    ws = Workspace(tmp_path_factory.mktemp("probed"))
    return ws, train(ws, run_cfg(steps=30), progress=False).run


def _decoder_weights(ws: Workspace, name: str) -> dict[str, torch.Tensor]:
    run = ws.run(name)
    tensors, _ = load_tensors(run.checkpoint_file(), kind=decoder_runs.DECODER_KIND)
    return tensors


def test_a_decoder_run_trains_logs_per_site_and_opens_again(probed_ws) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    cfg = _config(probed)
    result = train_decoder(ws, probed, cfg, progress=False)
    assert (result.status, result.step) == ("done", 12)
    assert set(result.inside) == set(SITES)
    assert all(0.0 <= v <= 1.0 for v in result.inside.values())
    assert ws.info(result.run).kind == "decoder" and ws.info(result.run).status == "done"
    assert ws.run(result.run).checkpoint_steps() == [6, 12]
    metrics = ws.run(result.run).metrics()
    assert {f"eval/inside/{s}" for s in SITES} <= set(metrics)
    assert len(metrics["train/loss"].steps) == 6
    assert decoder_runs_for(ws, name) == [result.run]
    trained = load_decoder(ws, probed)
    assert trained.step == 12 and trained.null_acts.shape == (3, int(probed.model.cfg.d_model))
    assert trained.site_index("L0.resid_post") == 2
    # a finished run is reused: nothing retrained, the same answer
    again = train_decoder(ws, probed, cfg, progress=False)
    assert again.inside == result.inside and again.step == 12
    # the decoder learned something about its inputs: its loss fell
    assert metrics["train/loss"].values[-1] < metrics["train/loss"].values[0]


def test_a_stopped_decoder_run_resumes_to_identical_weights(
    probed_ws, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    cfg = _config(probed, seed=3)
    straight = train_decoder(ws, probed, cfg, "straight", progress=False)
    original = DecoderTrainer.train_step

    def step_then_ctrl_c(self: DecoderTrainer) -> None:
        original(self)
        if self.step == 8:  # after an evaluation (6) and between saves (every 3)
            self._stop_requested = True

    monkeypatch.setattr(DecoderTrainer, "train_step", step_then_ctrl_c)
    stopped = train_decoder(ws, probed, cfg, "stopped", progress=False)
    assert (stopped.status, stopped.step) == ("interrupted", 8)
    monkeypatch.setattr(DecoderTrainer, "train_step", original)
    resumed = train_decoder(ws, probed, cfg, "stopped", progress=False)
    assert resumed.status == "done" and resumed.inside == straight.inside
    a, b = _decoder_weights(ws, "straight"), _decoder_weights(ws, "stopped")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ws.run("stopped").metric_rows() == ws.run("straight").metric_rows()


def test_reweighting_draws_the_worst_sites_more(probed_ws) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    for reweight in (True, False):
        cfg = _config(probed, reweight=reweight, steps=6, seed=5)
        trainer = DecoderTrainer(
            ws.create_run(f"rw-{reweight}", cfg.to_dict(), kind="decoder"), cfg, probed, progress=False
        )
        trainer.fit()
        rates = torch.tensor([trainer.inside[s] for s in SITES], dtype=torch.float64)
        expected = 0.5 + (1 - rates) if reweight else torch.ones(3, dtype=torch.float64)
        torch.testing.assert_close(trainer.site_weights, expected)


def test_a_decoder_does_not_open_for_another_model(probed_ws, tmp_path: Path) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    other_name = train(ws, run_cfg(steps=10, seed=1), progress=False).run
    other = load_trained(ws, other_name)
    with pytest.raises(ConfigError, match="has no decoder; train one"):
        load_decoder(ws, other)
    decoder_name = decoder_runs_for(ws, name)[0]
    with pytest.raises(CheckpointError, match=f"trained for run '{name}'"):
        load_decoder(ws, other, decoder_name)
    earlier = load_trained(ws, name, step=ws.run(name).checkpoint_steps()[1])
    with pytest.raises(CheckpointError, match="reads checkpoint step 30"):
        load_decoder(ws, earlier, decoder_name)
    with pytest.raises(ConfigError, match="not a decoder run"):
        load_decoder(ws, probed, other_name)
    with pytest.raises(ConfigError, match=r"was not trained on site 'L0\.head0'"):
        load_decoder(ws, probed).site_index("L0.head0")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"steps": 0}, "steps must be a positive integer"),
        ({"epsilon": 0.0}, "ε must be a number > 0"),
        ({"epsilon": -0.1}, "ε must be a number > 0"),
        ({"null_frac": 1.5}, "null_frac"),
        ({"precision": "fp16"}, "precision"),
        ({"lr": math.nan}, "lr must be a number > 0"),
    ],
)
def test_bad_decoder_training_settings_are_refused(change: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        _train_cfg(**change)


def test_bad_sites_and_positions_are_refused(probed_ws) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    with pytest.raises(ConfigError, match="the model has heads 0–1"):
        decoder_run_config(probed, sites=["L0.head7"])
    with pytest.raises(ConfigError, match="distinct sites"):
        decoder_run_config(probed, sites=["embed", "embed"])
    with pytest.raises(ConfigError, match="outside the task's 18 positions"):
        decoder_run_config(probed, positions=(18,))
    assert decoder_run_config(probed, positions=(-1, 5)).positions == (5, 17)
    with pytest.raises(ConfigError, match="not a usable decoder config"):
        DecoderRunConfig.from_dict({"kind": "decoder", "sites": []})


def test_invert_train_and_sample_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace(tmp_path)
    run = train(ws, run_cfg(steps=20), progress=False).run
    w = ["--workspace", str(tmp_path)]
    code, out, err = run_cli(
        capsys, "invert", "train", run, "--sites", "embed,L0.resid_post", "--steps", "6",
        "--d-model", "32", "--no-progress", *w,
    )  # fmt: skip
    assert code == 0, err
    decoder = out.strip()
    assert decoder_runs_for(ws, run) == [decoder] and "L0.resid_post" in err
    question = "12345+67890=080235"
    code, out, err = run_cli(
        capsys, "invert", "sample", run, question, "--site", "embed", "--position", "3",
        "--per-setting", "4", "--json", *w,
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["position"] == 3 and result["written"] == 16 and result["epsilon"] == EPSILON
    distances = [s["distance"] for s in result["samples"]]
    assert distances == sorted(distances)
    assert all(s["inside"] == (s["distance"] < EPSILON) for s in result["samples"])
    # at the embedding, D = 0 exactly when the sample has the query's token at that position
    for sample in result["samples"]:
        assert (sample["distance"] < 1e-6) == (sample["text"][3] == question[3])
    code, out, _ = run_cli(capsys, "invert", "sample", run, question, "--site", "L0.resid_post", *w)
    assert code == 0 and "inside ε" in out

    bad = [
        (["--site", "L0.head0"], "was not trained on site 'L0.head0'"),
        (["--site", "embed", "--epsilon", "0"], "ε must be a number > 0"),
        (["--site", "embed", "--epsilon", "-0.5"], "ε must be a number > 0"),
        (["--site", "embed", "--position", "40"], "not one the decoder was trained on"),
        (["--site", "embed", "--decoder", run], "not a decoder run"),
    ]
    for extra, message in bad:
        code, out, err = run_cli(capsys, "invert", "sample", run, question, *extra, *w)
        assert code == 2 and message in err and "Traceback" not in err, (extra, err)
        assert len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "invert", "sample", run, "12345+6789=1", "--site", "embed", *w)
    assert code == 2 and err.startswith("error:")
    other = train(ws, run_cfg(steps=10, seed=1), progress=False).run
    code, _, err = run_cli(
        capsys, "invert", "sample", other, question, "--site", "embed", "--decoder", decoder, *w
    )
    assert code == 2 and "does not match the probed model" in err
    # a decoder run that lost its state is refused, then started over with --restart
    rows = ws.run(decoder).metric_rows()
    ws.run(decoder).state_path().unlink()
    again = ["invert", "train", run, "--sites", "embed,L0.resid_post", "--steps", "6",
             "--d-model", "32", "--no-progress", *w]  # fmt: skip
    code, _, err = run_cli(capsys, *again)
    assert code == 2 and "has lost its training state" in err and "--restart" in err, err
    assert len(err.strip().splitlines()) == 1 and ws.run(decoder).metric_rows() == rows
    code, out, err = run_cli(capsys, *again, "--restart")
    assert code == 0 and out.strip() == decoder, err
    assert ws.run(decoder).metric_rows() == rows  # the same training again, each metric once


def test_a_malformed_counting_string_is_one_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = make_run_config(
        "counting", "inversion", steps=2, overrides={"train": {"eval_size": 16, "eval_every": 2}}
    )
    run = train(Workspace(tmp_path), cfg, progress=False).run
    for text in ("vvzccvczvvvzvcvc|v8", "vvzcc|q:3", "vv1zc|v:2", ""):
        code, _, err = run_cli(
            capsys, "invert", "sample", run, text, "--site", "embed", "--workspace", str(tmp_path)
        )
        assert code == 2 and err.startswith("error:") and "Traceback" not in err, (text, err)


@pytest.mark.parametrize("task", ["maze", "seqcont"])
def test_a_decoder_trains_for_any_task(tmp_path: Path, task: str) -> None:
    ws = Workspace(tmp_path)
    cfg = make_run_config(
        task, "tiny", steps=4, overrides={"train": {"eval_size": 16, "eval_every": 4, "save_every": 4}}
    )
    probed = load_trained(ws, train(ws, cfg, progress=False).run)
    decoder_cfg = decoder_run_config(
        probed, sites=["embed", "L0.resid_post"], train=_train_cfg(steps=4, eval_every=4),
        d_model=32, n_layers=1, n_cond_blocks=1,
    )  # fmt: skip
    result = train_decoder(ws, probed, decoder_cfg, progress=False)
    assert result.status == "done" and set(result.inside) == {"embed", "L0.resid_post"}
    assert load_decoder(ws, probed).config.probed_run == probed.run.name


def test_a_diverging_decoder_stops_with_a_clear_error_and_keeps_its_last_state(
    probed_ws, capsys: pytest.CaptureFixture[str]
) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    cfg = _config(probed, lr=1e30, seed=11, steps=6)
    with pytest.raises(DivergenceError, match="lower the learning rate"):
        train_decoder(ws, probed, cfg, "diverges", progress=False)
    assert ws.info("diverges").status == "failed"
    code, _, err = run_cli(
        capsys, "invert", "train", name, "--steps", "3", "--lr", "1e30", "--d-model", "32",
        "--seed", "12", "--no-progress", "--workspace", str(ws.root),
    )  # fmt: skip
    assert code == 2 and "diverged" in err and len(err.strip().splitlines()) == 1
    # a decoder whose weights overflow cannot sample: a clear error, not torch's
    broken = InversionDecoder(cfg.decoder)
    with torch.no_grad():
        broken.unembed.weight.fill_(math.inf)
    with pytest.raises(TinylensError, match="diverged"):
        broken.sample(torch.ones(2, cfg.decoder.d_act), torch.zeros(2, dtype=torch.int64))


def test_the_newest_usable_decoder_is_chosen(probed_ws, monkeypatch: pytest.MonkeyPatch) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    good = load_decoder(ws, probed).run.name
    original = DecoderTrainer.train_step

    def stop_early(self: DecoderTrainer) -> None:
        original(self)
        if self.step == 2:  # before its first evaluation: no checkpoint yet
            self._stop_requested = True

    monkeypatch.setattr(DecoderTrainer, "train_step", stop_early)
    unfinished = train_decoder(ws, probed, _config(probed, seed=21), "unfinished", progress=False)
    assert unfinished.status == "interrupted" and decoder_runs_for(ws, name)[-1] == "unfinished"
    assert load_decoder(ws, probed).run.name == good


def test_oversized_or_out_of_range_settings_are_refused(
    probed_ws, capsys: pytest.CaptureFixture[str]
) -> None:
    ws, name = probed_ws
    w = ["--workspace", str(ws.root)]
    for extra, message in (
        (["--d-model", "100000"], "d_model must be an integer in 1–2048"),
        (["--batch-size", "10000000"], "batch_size must be at most 8192"),
        (["--seed", str(2**64)], "seed must be an integer"),
    ):
        code, _, err = run_cli(capsys, "invert", "train", name, *extra, "--no-progress", *w)
        assert code == 2 and message in err, (extra, err)
    code, _, err = run_cli(
        capsys, "invert", "sample", name, "12345+67890=080235", "--site", "embed",
        "--seed", str(2**64), *w,
    )  # fmt: skip
    assert code == 2 and "--seed must be an integer" in err


def test_invert_names_a_decoder_run_and_a_decoder_with_a_broken_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ws = Workspace(tmp_path)
    name = train(ws, run_cfg(steps=10), progress=False).run
    probed = load_trained(ws, name)
    decoder = train_decoder(ws, probed, _config(probed), progress=False).run
    w = ["--workspace", str(tmp_path)]
    # a decoder run where a model run belongs
    code, _, err = run_cli(capsys, "invert", "train", decoder, "--steps", "2", "--no-progress", *w)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"run '{decoder}' is a decoder run, not a trained model run" in err
    assert f"it decodes run '{name}': pass that" in err and "unknown run config fields" not in err
    # a decoder whose config.json is broken: named as such, not "no decoder"
    (ws.run(decoder).path / "config.json").write_text("{")
    question = "12345+67890=080235"
    for extra in ([], ["--decoder", decoder]):
        code, _, err = run_cli(capsys, "invert", "sample", name, question, "--site", "embed", *extra, *w)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert f"decoder run '{decoder}' has an unreadable config.json" in err
        assert "fix or delete it, or train a new decoder with `tinylens invert train" in err
        assert f"invert train {name}" in err and "has no decoder" not in err


# -- a lost training state: refused, never rebuilt in part (as the model trainer) --


def _same_weights(ws: Workspace, a: str, b: str) -> bool:
    wa, wb = _decoder_weights(ws, a), _decoder_weights(ws, b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_decoder_run_that_lost_its_state_is_refused_and_restart_trains_it_again(
    probed_ws, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    cfg = _config(probed, seed=5)
    straight = train_decoder(ws, probed, cfg, "lost-straight", progress=False).run
    original = DecoderTrainer.train_step

    def step_then_ctrl_c(self: DecoderTrainer) -> None:
        original(self)
        self._stop_requested = self.step == 8  # saved at 3, 6 and on stopping at 8

    monkeypatch.setattr(DecoderTrainer, "train_step", step_then_ctrl_c)
    assert train_decoder(ws, probed, cfg, "lost", progress=False).step == 8
    monkeypatch.undo()
    run = ws.run("lost")
    for step in (8, 12):  # stopped part-way, then finished: both lose their state
        rows = run.metric_rows()
        run.state_path().unlink()
        with pytest.raises(CheckpointError) as caught:
            train_decoder(ws, probed, cfg, "lost", progress=False)
        message = str(caught.value)
        assert "decoder run 'lost' has lost its training state" in message, message
        assert f"latest.safetensors is missing, but its status.json records step {step}" in message
        assert f"`tinylens invert train {name} …` and --restart" in message
        assert "another --name" in message and "\n" not in message
        assert run.metric_rows() == rows, "nothing was logged again"
        assert run.state_file() is None and run.state().step == step
        restarted = train_decoder(ws, probed, cfg, "lost", progress=False, restart=True)
        assert (restarted.status, restarted.step) == ("done", 12)
        assert run.metric_rows() == ws.run(straight).metric_rows(), "each metric once"
        assert run.checkpoint_steps() == [6, 12] and _same_weights(ws, "lost", straight)


def test_a_decoder_run_that_lost_a_checkpoint_before_its_state_is_refused(probed_ws) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    cfg = _config(probed, seed=6, steps=6, eval_every=3)
    run = ws.run(train_decoder(ws, probed, cfg, progress=False).run)
    rows = run.metric_rows()
    run.checkpoint_file(3).unlink()
    with pytest.raises(CheckpointError) as caught:
        train_decoder(ws, probed, cfg, progress=False)
    message = str(caught.value)
    assert "lacks the checkpoints of steps 3, which were written before its saved state" in message
    assert "--restart (deletes decoder run" in message
    assert run.metric_rows() == rows and run.checkpoint_steps() == [6]


class _Killed(BaseException):
    """Stands in for kill -9 in the middle of writing a file."""


def test_a_decoder_run_killed_before_its_first_state_starts_over_and_logs_each_metric_once(
    probed_ws, monkeypatch: pytest.MonkeyPatch
) -> None:
    ws, name = probed_ws
    probed = load_trained(ws, name)
    cfg = _config(probed, seed=7, save_every=6)  # first save at 6, after that evaluation's checkpoint

    def killed(self: Run, tensors: object, meta: object) -> None:
        raise _Killed  # after the metrics of steps 2–6 were logged, before the state is written

    monkeypatch.setattr(Run, "save_state", killed)
    with pytest.raises(_Killed):
        train_decoder(ws, probed, cfg, "killed", progress=False)
    run = ws.run("killed")
    assert run.state_file() is None and run.checkpoint_steps() == [6]
    assert max(step for step, _, _ in run.metric_rows()) == 6
    monkeypatch.undo()
    assert train_decoder(ws, probed, cfg, "killed", progress=False).step == 12
    straight = train_decoder(ws, probed, cfg, "killed-straight", progress=False).run
    assert run.metric_rows() == ws.run(straight).metric_rows(), "each metric once"
    assert _same_weights(ws, "killed", straight)
