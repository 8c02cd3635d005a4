"""The regions study end to end: on the tiny trained family, on a local GPT-2, and bad input."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pytest
import torch

from tinylens import runs
from tinylens.analysis import interpolate
from tinylens.cli import main
from tinylens.config import derive_seed, make_run_config
from tinylens.errors import ConfigError
from tinylens.store import Run, Workspace
from tinylens.studies import regions as regions_study
from tinylens.studies import regions_analyses as an
from tinylens.studies import run_study
from tinylens.studies.framework import StudyInputs
from tinylens.studies.regions import read_prompts, study_config
from tinylens.tasks.seqcont import SeqcontTask

from ..helpers import save_tiny_gpt2

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "red", "big", "old"]


def test_study_writes_results_figures_and_report(regions_study_run: Run) -> None:
    sizes = regions_study_run.read_result("sizes")
    assert [s["d_model"] for s in sizes] == [16, 32]
    for size in sizes:
        assert size["training"][0]["step"] == 0 and len(size["training"]) >= 3
        assert set(size["trained"]["sharpness"]) == {"l2", "kl"}
        assert set(size["trained"]["sharpness"]["kl"]) == {"all", "same", "different"}
        assert size["slice"] is not None
    figures = regions_study_run.figure_names()
    assert len(figures) == 7  # curves, histogram, training, size, slices, flips, answers
    html = regions_study_run.report_path.read_text()
    assert html.count("data:image/png;base64,") == len(figures)
    assert html.index("Claims") < html.index("Interpolation curves")
    claims = regions_study_run.read_result("claims")
    assert len(claims) == 5 and all(c["rule"] for c in claims)


def test_a_model_that_barely_continues_passes_no_claim(regions_study_run: Run) -> None:
    claims = regions_study_run.read_result("claims")
    assert not any(c["holds"] for c in claims), [c["measured"] for c in claims]


def test_reported_sharpness_is_what_interpolate_measures(regions_study_run: Run) -> None:
    """Recompute the largest model's sharpness, trained and at its step-0 initialisation, from the
    run's checkpoints and the pairs the seed gives: the study must report the same numbers."""
    cfg = study_config("tiny")
    workspace = regions_study_run.workspace
    run_name = cfg.sizes[-1].default_name()
    pairs = an.task_pairs(SeqcontTask(), cfg.n_pairs, derive_seed(cfg.seed, "regions-pairs"))
    reported = regions_study_run.read_result("sizes")[-1]
    for key, step in (("trained", None), ("init", 0)):
        model = runs.load_trained(workspace, run_name, step).model
        curves = interpolate(model, pairs.a["all"], pairs.b["all"], steps=cfg.steps)
        expected = sorted(round(float(v), 4) for v in curves.sharpness)
        assert sorted(reported[key]["sharpness"]["l2"]["all"]["values"]) == pytest.approx(
            expected, abs=1e-4
        )


def test_running_again_reuses_the_models_and_gives_the_same_numbers(regions_study_run: Run) -> None:
    before = regions_study_run.read_result("sizes")
    again = run_study("regions", regions_study_run.workspace, "tiny", progress=False)
    assert again.name == regions_study_run.name
    assert again.read_result("sizes") == before


def _prompt_file(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _sentences(n: int, length: int = 6, seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    picks = torch.randint(0, len(WORDS), (n, length), generator=g)
    return [" ".join(WORDS[int(i)] for i in row) for row in picks]


def test_a_local_checkpoint_and_a_prompt_file(tmp_path: Path) -> None:
    save_tiny_gpt2(tmp_path / "gpt2", WORDS, seed=1)
    prompts = _prompt_file(tmp_path / "prompts.txt", _sentences(16))
    workspace = Workspace(tmp_path / "ws")
    run = run_study(
        "regions", workspace, "tiny", progress=False, model=tmp_path / "gpt2", prompts=prompts
    )
    sizes = run.read_result("sizes")
    assert len(sizes) == 1 and sizes[0]["training"] == [] and sizes[0]["run"] is None
    assert len(sizes[0]["trained"]["flips"]) == 15  # 16 prompts: 15 consecutive pairs
    claims = run.read_result("claims")
    assert len(claims) == 5
    assert "one checkpoint" in claims[1]["rule"]  # growth with training and size not measurable
    assert len(run.figure_names()) == 5  # no training or size figures for one checkpoint
    # a changed prompt file is another study run
    _prompt_file(prompts, _sentences(16, seed=1))
    other = run_study(
        "regions", workspace, "tiny", progress=False, model=tmp_path / "gpt2", prompts=prompts
    )
    assert other.name != run.name


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ([], "has 0 prompts"),
        (["the cat sat", "", "   "], "has 1 prompt;"),
        (["the cat sat on", "the cat sat", "a dog ran to"], "prompt 2 has 3"),
    ],
)
def test_bad_prompt_files_are_refused_before_anything_is_written(
    tmp_path: Path, lines: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    save_tiny_gpt2(tmp_path / "gpt2", WORDS, seed=1)
    prompts = _prompt_file(tmp_path / "prompts.txt", lines)
    workspace = tmp_path / "ws"
    with pytest.raises(ConfigError, match=message):
        run_study("regions", Workspace(workspace), "tiny", model=tmp_path / "gpt2", prompts=prompts)
    args = ["study", "regions", "--model", str(tmp_path / "gpt2"), "--prompts", str(prompts)]
    capsys.readouterr()  # what saving the checkpoint printed
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "-w", str(workspace)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and message.split(maxsplit=1)[0] in error
    assert not workspace.exists() or not any(p.name.startswith("study-") for p in workspace.iterdir())


def test_model_and_prompts_go_together(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    save_tiny_gpt2(tmp_path / "gpt2", WORDS, seed=1)
    prompts = _prompt_file(tmp_path / "prompts.txt", _sentences(4))
    with pytest.raises(ConfigError, match="add --prompts FILE"):
        study_config("quick", StudyInputs(model=tmp_path / "gpt2"))
    with pytest.raises(ConfigError, match="add --model DIR"):
        study_config("quick", StudyInputs(prompts=prompts))
    with pytest.raises(ConfigError, match="does not exist"):
        study_config("quick", StudyInputs(model=tmp_path / "gpt2", prompts=tmp_path / "missing.txt"))
    with pytest.raises(ConfigError, match="--prompts applies to the regions study only"):
        run_study("addition", Workspace(tmp_path / "ws"), "tiny", prompts=prompts)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "regions", "--prompts", str(prompts), "-w", str(tmp_path / "ws")])
    assert exit_info.value.code == 2
    assert "add --model DIR" in capsys.readouterr().err


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    capsys.readouterr()
    try:
        main(args)
        code = 0
    except SystemExit as exit_info:
        code = int(exit_info.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def test_regions_command_on_a_checkpoint_and_on_a_run(
    tmp_path: Path, regions_study_run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    save_tiny_gpt2(tmp_path / "gpt2", WORDS, seed=1)
    prompts = _prompt_file(tmp_path / "prompts.txt", _sentences(6))
    code, out, _ = _cli(["regions", str(tmp_path / "gpt2"), "--prompts", str(prompts), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["pairs"] == 5 and len(result["sharpness"]) == 5 - result["dropped"]
    assert result["read_hook"] == "ln_final.hook_out"
    # a run of ours reads its task's prompts
    task = SeqcontTask()
    sample = task.sample(4, torch.Generator().manual_seed(0))
    lines = [task.decode(row[:-1]) for row in sample]
    run_prompts = _prompt_file(tmp_path / "seqcont.txt", lines)
    run_name = study_config("tiny").sizes[-1].default_name()
    workspace = str(regions_study_run.workspace.root)
    code, out, err = _cli(["regions", run_name, "--prompts", str(run_prompts), "-w", workspace], capsys)
    assert code == 0, err
    assert out.startswith("blocks.0.hook_resid_post → ln_final.hook_out, linear paths of 11 steps")
    code, out, err = _cli(
        ["regions", run_name, "--prompts", str(run_prompts), "-w", workspace, "--json"], capsys
    )
    assert code == 0 and json.loads(out)["pairs"] == 3
    # a line that is no prompt of the task is named
    _prompt_file(tmp_path / "seqcont.txt", [*lines[:2], "Van done in", lines[3]])
    code, _, err = _cli(["regions", run_name, "--prompts", str(run_prompts), "-w", workspace], capsys)
    assert code == 2 and len(err.splitlines()) == 1 and "seqcont.txt, line 3: 'Van done in'" in err, err


@pytest.mark.parametrize(
    ("options", "lines", "message"),
    [
        (
            ["--write-hook", "blocks.1.hook_resid_post", "--read-hook", "blocks.0.hook_resid_post"],
            None,
            "runs after the read site",
        ),
        (["--write-hook", "blocks.0.hook_resid_pst"], None, "did you mean"),
        (["--steps", "1"], None, "steps must be an integer ≥ 2"),
        (["--mode", "spline"], None, "valid choices: linear, arc, slerp"),
        ([], ["the cat sat", "the cat", "a dog ran"], "same number of tokens"),
        ([], [], "has 0 prompts"),
        # a blank line between prompts would shift every pair after it
        ([], ["the cat sat", "", "a dog ran", "the cat sat"], "line 2 is blank"),
        ([], ["", "the cat sat", "a dog ran", "the cat sat"], "line 1 is blank"),
        ([], ["the cat sat", "a dog ran", "   ", "the cat sat"], "line 3 is blank"),
    ],
)
def test_regions_command_refuses_bad_input_with_one_line(
    tmp_path: Path,
    options: list[str],
    lines: list[str] | None,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    save_tiny_gpt2(tmp_path / "gpt2", WORDS, seed=1)
    prompts = _prompt_file(tmp_path / "prompts.txt", _sentences(4) if lines is None else lines)
    code, _, err = _cli(["regions", str(tmp_path / "gpt2"), "--prompts", str(prompts), *options], capsys)
    assert code == 2
    assert len(err.splitlines()) == 1 and message in err, err


def test_training_bends_the_paths_that_random_init_leaves_straight(tmp_path: Path) -> None:
    """The paper's direction on a model of ours: at random initialisation the output moves almost
    linearly along every path (median sharpness ≈ 1); a model trained to do the task bends them
    (higher median sharpness, in the paper's L2 and in KL). 300 steps reach 100% here."""
    overrides = {
        "model": {"n_layers": 2, "d_model": 32, "n_heads": 4, "d_head": 8, "d_mlp": 128},
        "train": {
            "steps": 300,
            "eval_every": 300,
            "eval_size": 256,
            "save_every": 300,
            "n_checkpoints": 0,
        },
    }
    workspace = Workspace(tmp_path)
    result = runs.train(
        workspace, make_run_config("seqcont", "cpu", overrides=overrides), progress=False
    )
    assert result.final_eval is not None and result.final_eval.exact > 0.9
    pairs = an.task_pairs(SeqcontTask(), 128, seed=0)
    kw = {"steps": 31, "mode": "linear", "write_hook": "blocks.0.hook_resid_post"}
    init = an.sharpness_of(runs.load_trained(workspace, result.run, 0).model, pairs, **kw)
    trained = an.sharpness_of(runs.load_trained(workspace, result.run).model, pairs, **kw)
    assert init["l2"].median < 1.1 and init["l2"].share_same_region > 0.9
    assert trained["l2"].median > init["l2"].median + 0.1
    assert trained["kl"].median > init["kl"].median + 0.4


def test_blank_lines_at_the_end_of_a_prompt_file_are_no_prompts(tmp_path: Path) -> None:
    lines = _sentences(3)
    prompts = _prompt_file(tmp_path / "prompts.txt", [*lines, "", "  "])
    assert read_prompts(prompts) == lines


def test_a_prompt_file_is_read_a_bounded_line_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A huge line is refused having held one line's bound of it, a huge file at the line that
    passes the bound of characters, a bad byte with the line it follows."""
    long_line = tmp_path / "long.txt"
    long_line.write_text("the cat sat\n" + "x" * 8_000_000 + "\nend\n")  # 8 MB on one line
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match="line 2 is longer than 8,192 characters"):
            read_prompts(long_line)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1_000_000  # reading the whole file (or line) would hold 8 MB at least

    monkeypatch.setattr(regions_study, "MAX_PROMPT_FILE_CHARS", 30)
    many = _prompt_file(tmp_path / "many.txt", ["the cat sat"] * 10)  # 11 characters a line
    with pytest.raises(ConfigError, match=r"more than 30 characters of prompts \(at line 3\)"):
        read_prompts(many)

    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"the cat sat\na dog ran\n\xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_prompts(bad)
