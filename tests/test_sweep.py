"""Sweeps on the local backend: the spec, expansion, running, resuming, failures, the report, the CLI."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tinylens import cli
from tinylens.errors import ConfigError, Interrupted, TinylensError
from tinylens.store import DB_NAME, Workspace
from tinylens.studies import run_study
from tinylens.sweep import backends as sweep_backends
from tinylens.sweep import expand, parse_spec, read_spec, run_sweep, write_report
from tinylens.sweep.driver import TrialResult, read_trials
from tinylens.sweep.report import metric_figure
from tinylens.sweep.trial import torch_threads
from tinylens.train import DivergenceError, Trainer

from .helpers import stop_every_trainer_at
from .sweep_helpers import TRAIN, comparable, four_trials, spec_table

# -- the spec --


def test_grid_expands_in_file_order_last_key_fastest() -> None:
    trials = expand(four_trials())
    assert [t.axes for t in trials] == [
        {"model.n_layers": 1, "seed": 0},
        {"model.n_layers": 1, "seed": 1},
        {"model.n_layers": 2, "seed": 0},
        {"model.n_layers": 2, "seed": 1},
    ]
    assert [t.config.model.n_layers for t in trials] == [1, 1, 2, 2]
    assert [t.config.seed for t in trials] == [0, 1, 0, 1]
    assert all(t.config.train.steps == TRAIN["steps"] for t in trials)
    # a trial is the run `tinylens train` makes for the same config
    assert trials[0].run == trials[0].config.default_name()


def test_random_axes_are_seeded_rounded_and_crossed_with_the_grid() -> None:
    random = {
        "samples": 3,
        "seed": 7,
        "train.lr": {"log_uniform": [1e-4, 1e-2]},
        "model.d_mlp": {"choice": [32, 64]},
        "train.warmup_steps": {"int_uniform": [0, 5]},
    }
    spec = four_trials(grid={"seed": [0, 1]}, random=random)
    trials = expand(spec)
    assert len(trials) == 6
    assert trials == expand(four_trials(grid={"seed": [0, 1]}, random=random))  # same draws
    lrs = [t.axes["train.lr"] for t in trials]
    assert all(1e-4 <= lr <= 1e-2 and float(f"{lr:.3g}") == lr for lr in lrs)
    assert lrs[:3] == lrs[3:]  # the same 3 draws for each grid point
    assert len(set(lrs)) == 3
    assert {t.axes["model.d_mlp"] for t in trials} <= {32, 64}
    other = expand(four_trials(grid={"seed": [0, 1]}, random={**random, "seed": 8}))
    assert [t.axes["train.lr"] for t in other] != lrs


def test_trials_giving_the_same_run_are_kept_once() -> None:
    spec = four_trials(grid={"seed": [0, 0, 1]})
    assert [t.axes["seed"] for t in expand(spec)] == [0, 1]


def test_a_spec_file_reads_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "spec.toml"
    path.write_text(
        '[sweep]\ntask = "addition"\npreset = "tiny"\n[grid]\n"model.n_layers" = [1, 2]\n'
        "[base.train]\nsteps = 30\n"
    )
    spec = read_spec(path)
    assert spec.name == "addition-tiny"
    assert [t.config.train.steps for t in expand(spec)] == [30, 30]
    assert spec.run_name.startswith("sweep-addition-tiny-")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": {}}, "unknown entries ['extra']"),
        ({"sweep": {"task": "nope"}}, "unknown task in [sweep] 'nope'"),
        ({"sweep": {"preset": "tiny"}}, "[sweep] must name a task"),
        ({"sweep": {"task": ["addition"]}}, "unknown task in [sweep] ['addition']"),
        ({"sweep": {"task": "addition", "preset": "huge"}}, "unknown preset in [sweep] 'huge'"),
        ({"grid": {"n_layers": [1]}}, "axis 'n_layers' is not seed, steps or SECTION.FIELD"),
        ({"grid": {"model.n_layers": []}}, "must be a non-empty list"),
        ({"grid": {"model.n_layers": [1, 0]}}, "the trial at model.n_layers = 0: model n_layers"),
        ({"grid": {"model.colour": [1]}}, "unknown model fields ['colour']"),
        ({"grid": {"model.d_vocab": [9]}}, "unknown model fields ['d_vocab']"),
        ({"random": {"samples": 2, "train.lr": {"log_uniform": [0, 1]}}}, "needs 0 < low <= high"),
        ({"random": {"samples": 2, "train.lr": {"gauss": [0, 1]}}}, "unknown entries ['gauss']"),
        ({"random": {"samples": 2}}, "[random] draws no axis"),
        ({"grid": {"seed": list(range(101)), "steps": list(range(1, 101))}}, "at most 10_000"),
        # counted before any point is built: a billion would not fit in memory
        (
            {
                "grid": {
                    "seed": list(range(1000)),
                    "steps": list(range(1, 1001)),
                    "train.lr": [1e-3] * 1000,
                }
            },
            "expands to 1_000_000_000 trials",
        ),
        ({"random": {"samples": 2, "model.n_layers": {"int_uniform": [1, 10**20]}}}, "within ±2^62"),
        ({"random": {"samples": 2, "train.lr": {"uniform": [-1.7e308, 1.7e308]}}}, "too wide"),
        (
            {
                "grid": {"train.lr": [1e-3]},
                "random": {"samples": 2, "train.lr": {"uniform": [1e-3, 2e-3]}},
            },
            "'train.lr' is both a [grid] and a [random] axis",
        ),
        ({"measure": {"steps_to": [0.9999991, 0.9999994]}}, "print alike"),
        ({"sweep": {"task": "addition", "name": "a/b"}}, "[sweep] name must be"),
        ({"report": {"x": "train.lr"}}, "[report] x = 'train.lr' is not an axis"),
        ({"measure": {"steps_to": [1.5]}}, "steps_to must be a list of numbers in (0, 1]"),
        ({"measure": {"fresh": {"n": 0}}}, "fresh.n must be an integer in [1,"),
    ],
)
def test_a_bad_spec_is_one_clear_error(change: dict, message: str) -> None:
    table = spec_table()
    for section, values in change.items():
        table[section] = {**table.get(section, {}), **values} if section == "sweep" else values
    if "sweep" in change and "task" not in change["sweep"]:
        del table["sweep"]["task"]
    with pytest.raises(TinylensError) as caught:
        expand(parse_spec(table))
    assert message in str(caught.value)


def test_an_unreadable_spec_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read sweep spec"):
        read_spec(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep\n")
    with pytest.raises(ConfigError, match="does not parse"):
        read_spec(bad)


# -- running --


@pytest.fixture
def count_steps(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts every optimizer step taken in this process."""
    steps: list[int] = []
    original = Trainer.train_step

    def counted(self: Trainer) -> None:
        steps.append(1)
        original(self)

    monkeypatch.setattr(Trainer, "train_step", counted)
    return steps


def test_a_sweep_trains_every_trial_and_a_rerun_trains_nothing(
    tmp_path: Path, count_steps: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = four_trials()
    workspace = Workspace(tmp_path)
    first = run_sweep(workspace, spec, progress=False)
    assert len(count_steps) == 4 * TRAIN["steps"]
    assert [t.status for t in first.trials] == ["done"] * 4
    assert sorted(o.trained_steps for o in first.outcomes.values()) == [TRAIN["steps"]] * 4
    row = first.trials[0]
    assert row.metrics["steps"] == TRAIN["steps"]
    assert {"eval/acc", "eval/loss", "fresh/acc", "fresh/loss", "steps_to_0.01"} <= set(row.metrics)
    # the recorded rows are the ones returned, and the index knows each run as done, with metrics
    assert comparable(first) == [
        {
            **r.to_dict(),
            "metrics": {k: v for k, v in r.to_dict()["metrics"].items() if k != "train_seconds"},
        }
        for r in read_trials(first.run)
    ]
    infos = {i.name: i for i in workspace.runs()}
    assert all(
        infos[t.run].status == "done" and infos[t.run].step == TRAIN["steps"] for t in first.trials
    )
    assert infos[first.run.name].kind == "sweep"
    assert infos[first.run.name].status == "done"
    assert "eval/acc" in workspace.metrics(row.run)

    # a rerun, on either backend, trains and measures nothing and never starts Ray
    def no_ray(*args: object, **kwargs: object) -> None:
        raise AssertionError("Ray was started for a finished sweep")

    monkeypatch.setattr(sweep_backends, "run_ray", no_ray)
    monkeypatch.setattr("tinylens.sweep.driver.run_ray", no_ray)
    for backend in ("local", "ray"):
        again = run_sweep(Workspace(tmp_path), spec, backend=backend, progress=False)
        assert again.outcomes == {}
        assert comparable(again) == comparable(first)
    assert len(count_steps) == 4 * TRAIN["steps"]


def test_the_index_rows_written_by_the_driver_equal_a_rebuild(tmp_path: Path) -> None:
    result = run_sweep(Workspace(tmp_path), four_trials(grid={"seed": [0, 1]}), progress=False)
    workspace = Workspace(tmp_path)
    before = {i.name: (i.status, i.step) for i in workspace.runs()}
    metrics_before = {t.run: workspace.metrics(t.run).keys() for t in result.trials}
    workspace.reindex()
    assert {i.name: (i.status, i.step) for i in workspace.runs()} == before
    assert {t.run: workspace.metrics(t.run).keys() for t in result.trials} == metrics_before


def test_a_trial_that_raises_is_recorded_and_the_rest_finish(tmp_path: Path) -> None:
    spec = four_trials(grid={"seed": [0, 1, 2]})
    workspace = Workspace(tmp_path)
    broken = expand(spec)[1]
    run = workspace.create_run(broken.run, broken.config.to_dict(), kind="train")
    state = run.path / "checkpoints" / "latest.safetensors"
    state.parent.mkdir()
    state.write_bytes(b"not a checkpoint")
    result = run_sweep(workspace, spec, progress=False)
    assert [t.status for t in result.trials] == ["done", "failed", "done"]
    failed = result.trials[1]
    assert failed.error is not None and failed.error.startswith("CheckpointError:")
    assert str(state) in failed.error
    assert Workspace(tmp_path).info(result.run.name).status == "failed"
    assert read_trials(result.run)[1].error == failed.error
    # fixed, the next run finishes that trial alone
    state.unlink()
    again = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert list(again.outcomes) == [broken.run]
    assert [t.status for t in again.trials] == ["done"] * 3
    assert not run.has_result("failure")


def test_a_diverged_trial_is_not_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = four_trials(grid={"seed": [0, 1]})
    diverging = expand(spec)[0].run
    original = Trainer.fit

    def fit(self: Trainer):
        if self.run.name == diverging:
            raise DivergenceError("loss became NaN at step 3; lower the learning rate")
        return original(self)

    monkeypatch.setattr(Trainer, "fit", fit)
    first = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert [t.status for t in first.trials] == ["failed", "done"]
    monkeypatch.undo()
    # resuming it would replay the same steps to the same NaN: it stays failed, with its error
    again = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert again.outcomes == {}
    assert again.trials[0].status == "failed"
    assert again.trials[0].error == "DivergenceError: loss became NaN at step 3; lower the learning rate"


def test_a_trial_whose_run_config_was_edited_fails_clearly(tmp_path: Path) -> None:
    spec = four_trials(grid={"seed": [0, 1]})
    trial = expand(spec)[0]
    edited = {**trial.config.to_dict(), "seed": 5}
    # a folder under the trial's name holding another (valid) config: that trial fails, alone
    Workspace(tmp_path).create_run(trial.run, edited, kind="train")
    result = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert [t.status for t in result.trials] == ["failed", "done"]
    error = result.trials[0].error
    assert error is not None and error.startswith("ConfigError:")
    assert "holds another config than the sweep's trial" in error


def test_an_interrupted_trial_stops_the_sweep_and_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = four_trials(grid={"seed": [0, 1]})
    stop_every_trainer_at(monkeypatch, 30)
    with pytest.raises(Interrupted, match="stopped with 2 of 2 trials unfinished"):
        run_sweep(Workspace(tmp_path), spec, progress=False)
    monkeypatch.undo()
    result = run_sweep(Workspace(tmp_path), spec, progress=False)
    trained = [result.outcomes[t.run].trained_steps for t in result.trials]
    assert trained == [TRAIN["steps"] - 30, TRAIN["steps"]]
    uninterrupted = run_sweep(Workspace(tmp_path / "b"), spec, progress=False)
    assert comparable(result) == comparable(uninterrupted)


def test_unknown_backend_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown backend 'slurm'"):
        run_sweep(Workspace(tmp_path), four_trials(), backend="slurm")
    assert not (tmp_path / DB_NAME).exists()


# -- the store's files-only handle --


def test_a_files_only_workspace_never_touches_the_index(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    workspace.create_run("r", {"a": 1}, kind="train")
    db_bytes = (tmp_path / DB_NAME).read_bytes()
    files = Workspace(tmp_path, index=False)
    files.set_status("r", "running", 5)
    files.log_metrics("r", [(5, "train/loss", 1.5)])
    files.delete_metrics_after("r", 4)
    files.log_metrics("r", [(5, "train/loss", 1.25)])
    assert (tmp_path / DB_NAME).read_bytes() == db_bytes
    assert files.run("r").state().status == "running"
    with pytest.raises(TinylensError, match="writes run files only"):
        files.runs()
    assert workspace.info("r").step == 0  # stale until the driver indexes it
    workspace.index_run("r")
    assert workspace.info("r").step == 5
    assert workspace.metrics("r")["train/loss"].values.tolist() == [1.25]


# -- the report --


def _row(trial: int, layers: int, seed: int, acc: float) -> TrialResult:
    axes = {"model.n_layers": layers, "seed": seed}
    return TrialResult(
        trial, f"r{trial}", axes, "done", None, {"eval/acc": acc, "steps_to_0.9": math.nan}
    )


def test_metric_figure_draws_a_dot_per_trial_and_a_line_of_means_per_group() -> None:
    rows = [_row(0, 1, 0, 0.2), _row(1, 1, 1, 0.4), _row(2, 2, 0, 0.6), _row(3, 2, 1, 1.0)]
    fig = metric_figure(rows, "eval/acc", "model.n_layers", None)
    (line,) = fig.axes[0].get_lines()
    assert line.get_xdata().tolist() == [1, 2]
    assert line.get_ydata().tolist() == pytest.approx([0.3, 0.8])
    assert sum(len(c.get_offsets()) for c in fig.axes[0].collections) == 4
    grouped = metric_figure(rows, "eval/acc", "model.n_layers", "seed")
    assert [ln.get_ydata().tolist() for ln in grouped.axes[0].get_lines()] == [[0.2, 0.6], [0.4, 1.0]]


def test_the_report_has_the_table_and_a_figure_per_metric(tmp_path: Path) -> None:
    spec = four_trials(grid={"model.n_layers": [1, 2]}, report={"group": "model.n_layers"})
    result = run_sweep(Workspace(tmp_path), spec, progress=False)
    path = write_report(result.run, spec, result.trials)
    html = path.read_text()
    assert "Sweep test" in html and result.trials[1].run in html
    assert html.count("<img") == len(result.run.figure_names()) >= 4  # eval/acc, loss, fresh acc, loss


# -- the command line --


def _spec_file(tmp_path: Path, **sections: object) -> Path:
    table = spec_table(**sections)
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(table))
    return path


def test_cli_runs_a_sweep_and_prints_a_row_per_trial(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = _spec_file(tmp_path, grid={"seed": [0, 1]})
    cli.main(["sweep", str(spec), "-w", str(tmp_path / "ws"), "--no-progress", "--report"])
    printed = capsys.readouterr()
    assert "sweep test" in printed.out and printed.out.count("done") == 2
    assert "report.html" in printed.out
    assert "2 of 2 trials ran now (240 steps trained)" in printed.err
    cli.main(["sweep", str(spec), "-w", str(tmp_path / "ws"), "--no-progress", "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["done", "done"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "slurm"], "error: unknown backend 'slurm'"),
        (["--address", "ray://x:10001"], "error: --address is for the ray backend"),
        (["--cpus", "2"], "error: --cpus is for the ray backend"),
    ],
)
def test_cli_bad_options_are_one_line_errors(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    spec = _spec_file(tmp_path)
    with pytest.raises(SystemExit) as caught:
        cli.main(["sweep", str(spec), "-w", str(tmp_path / "ws"), *args])
    assert caught.value.code == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def test_cli_exits_2_when_a_trial_fails_and_still_records_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_path = _spec_file(tmp_path, grid={"seed": [0, 1]})
    spec = read_spec(spec_path)
    workspace = Workspace(tmp_path / "ws")
    broken = expand(spec)[0]
    run = workspace.create_run(broken.run, broken.config.to_dict(), kind="train")
    (run.path / "checkpoints").mkdir()
    (run.path / "checkpoints" / "latest.safetensors").write_bytes(b"junk")
    with pytest.raises(SystemExit) as caught:
        cli.main(["sweep", str(spec_path), "-w", str(tmp_path / "ws"), "--no-progress"])
    assert caught.value.code == cli.EXIT_USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: 1 of 2 trials did not finish (run {broken.run}: CheckpointError")


def test_the_example_spec_is_valid_and_shown_in_the_readme() -> None:
    root = Path(__file__).resolve().parents[1]
    example = root / "examples" / "addition-depth.toml"
    trials = expand(read_spec(example))
    assert len(trials) == 6
    assert {t.config.model.n_layers for t in trials} == {1, 2}
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"```toml\n{example.read_text(encoding='utf-8')}```" in readme


# -- studies that take a sweep's family --


def _seqcont_family() -> dict:
    return spec_table(
        sweep={"name": "widths", "task": "seqcont", "preset": "cpu"},
        base={
            "model": {"n_layers": 2},
            "train": {
                "steps": 60,
                "eval_every": 30,
                "eval_size": 64,
                "save_every": 30,
                "n_checkpoints": 4,
            },
        },
        grid={"model.d_model": [32, 16]},
        measure={},
    )


def test_the_regions_study_measures_a_sweeps_trials_without_retraining_them(
    tmp_path: Path, count_steps: list[int]
) -> None:
    spec = parse_spec(_seqcont_family())
    swept = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert len(count_steps) == 2 * 60
    family = tuple(t.config for t in expand(spec))
    study = run_study("regions", Workspace(tmp_path), "tiny", progress=False, family=family)
    assert len(count_steps) == 2 * 60  # the study reused the sweep's runs
    sizes = study.read_result("sizes")
    assert [s["d_model"] for s in sizes] == [16, 32]  # smallest first
    assert {s["run"] for s in sizes} == {t.run for t in swept.trials}


def test_a_sweep_family_must_suit_the_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    addition = tuple(t.config for t in expand(four_trials()))
    with pytest.raises(ConfigError, match='must have task = "seqcont"'):
        run_study("regions", Workspace(tmp_path), "tiny", progress=False, family=addition)
    with pytest.raises(ConfigError, match="--sweep applies to the regions study only"):
        run_study("addition", Workspace(tmp_path), "tiny", progress=False, family=addition)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(_seqcont_family()))
    with pytest.raises(SystemExit):
        cli.main(
            ["study", "regions", "--sweep", str(spec), "--model", str(tmp_path), "-w", str(tmp_path)]
        )
    assert capsys.readouterr().err.startswith("error: give --sweep (a family of our models) or --model")


# -- damaged and broken trials (findings, second round, 3) --


def _add_noise(path: Path, n: int = 4096) -> None:
    """Overwrite up to ``n`` bytes in the middle of a file with random bytes."""
    raw = bytearray(path.read_bytes())
    middle = len(raw) // 2
    size = min(n, len(raw) - middle)
    raw[middle : middle + size] = np.random.default_rng(0).bytes(size)
    path.write_bytes(bytes(raw))


def test_a_damaged_finished_trial_is_recorded_failed_and_the_rest_kept(
    tmp_path: Path, count_steps: list[int]
) -> None:
    spec = four_trials(grid={"seed": [0, 1]})
    first = run_sweep(Workspace(tmp_path), spec, progress=False)
    damaged = first.trials[0].run
    for path in (tmp_path / damaged / "checkpoints").glob("*.safetensors"):
        _add_noise(path)
    trained = len(count_steps)
    again = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert [t.status for t in again.trials] == ["failed", "done"]
    assert list(again.outcomes) == [damaged] and len(count_steps) == trained
    error = again.trials[0].error
    assert error is not None and error.startswith("CheckpointError:") and "damaged" in error
    assert f"tinylens resume {damaged} --restart" in error
    assert read_trials(again.run)[0].status == "failed"
    assert Workspace(tmp_path).info(again.run.name).status == "failed"
    # the same sweep again says so again; a restarted run is then reused
    assert run_sweep(Workspace(tmp_path), spec, progress=False).trials[0].status == "failed"
    # retrained with the trial's torch threads: a float sum depends on the thread count, and the
    # rows are then compared bit for bit
    with torch_threads(spec.cpus_per_trial):
        cli.main(["resume", damaged, "-w", str(tmp_path), "--restart", "--no-progress"])
    assert len(count_steps) == trained + TRAIN["steps"]
    fixed = run_sweep(Workspace(tmp_path), spec, progress=False)
    assert [t.status for t in fixed.trials] == ["done", "done"]
    assert fixed.outcomes[damaged].trained_steps == 0  # only its fresh scores, deleted too
    assert comparable(fixed) == comparable(first)


def test_cli_a_broken_trial_config_fails_that_trial_and_the_others_finish(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec_path = _spec_file(tmp_path, grid={"seed": [0, 1, 2]})
    broken = expand(read_spec(spec_path))[1]
    run = Workspace(tmp_path / "ws").create_run(broken.run, broken.config.to_dict(), kind="train")
    (run.path / "config.json").write_text("{")
    args = ["sweep", str(spec_path), "-w", str(tmp_path / "ws"), "--no-progress"]
    with pytest.raises(SystemExit) as caught:
        cli.main([*args, "--report"])
    assert caught.value.code == cli.EXIT_USAGE
    printed = capsys.readouterr()
    assert printed.out.count("done") == 2 and printed.out.count("failed") == 1
    assert "report.html" in printed.out
    last = printed.err.strip().splitlines()[-1]
    assert last.startswith(f"error: 1 of 3 trials did not finish (run {broken.run}: ConfigError")
    assert "config.json is not valid JSON" in last
    with pytest.raises(SystemExit):
        cli.main([*args, "--json"])
    rows = json.loads(capsys.readouterr().out)
    assert [r["status"] for r in rows] == ["done", "failed", "done"]
