"""The seqcont study end to end: on a tiny trained model, and on a local GPT-2 checkpoint."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tinylens import analysis as C
from tinylens import runs
from tinylens.analysis import ComponentGraph
from tinylens.cli import main
from tinylens.config import derive_seed
from tinylens.errors import ConfigError, TokenError, UnknownNameError
from tinylens.model import load_pretrained, load_pretrained_tokenizer
from tinylens.store import Run, Workspace
from tinylens.studies import run_study
from tinylens.studies import seqcont_analyses as an
from tinylens.studies.seqcont import study_config
from tinylens.tasks.seqcont import PAPER_FAMILIES, SeqcontTask

from ..helpers import save_tiny_gpt2

RESULTS = ["behaviour", "circuits", "cross_family", "random_circuits", "successor", "shared", "graph"]


def read(run: Run, name: str):
    return run.read_result(name)


def test_study_writes_results_figures_and_report(seqcont_study_run: Run) -> None:
    for name in [*RESULTS, "claims"]:
        assert seqcont_study_run.read_result(name) is not None, name
    figures = seqcont_study_run.figure_names()
    assert len(figures) == 5
    html = seqcont_study_run.report_path.read_text()
    assert html.index("Claims") < html.index("Behaviour and circuits")
    assert html.count("data:image/png;base64,") == len(figures)
    claims = read(seqcont_study_run, "claims")
    assert len(claims) == 4 and all(c["rule"] for c in claims)


def test_every_circuit_keeps_the_share_it_reports(seqcont_study_run: Run) -> None:
    """Re-run each family's node circuit from the saved result (fresh prompts of the same seed)
    and check it keeps the share the study wrote down."""
    cfg = study_config("tiny")
    workspace = seqcont_study_run.workspace
    assert cfg.model is not None
    trained = runs.load_trained(workspace, cfg.model.default_name())
    graph = ComponentGraph(trained.model)
    circuits = read(seqcont_study_run, "circuits")
    task = SeqcontTask()
    for family, found in circuits.items():
        assert found["node_share"] >= cfg.min_share and found["edge_share"] >= cfg.min_share
        seed = derive_seed(cfg.seed, f"seqcont-{family}")
        prompts = an.family_prompts(task, an.WordEncoder(task), family, cfg.n_prompts, seed)
        ablated = C.mean_node_outputs(graph, prompts.corrupt)
        score = C.faithfulness(
            graph,
            C.node_circuit(graph, found["nodes"]),
            prompts.clean,
            ablated=ablated,
            metric=prompts.metric,
        )
        assert score.share == pytest.approx(found["node_share"], abs=1e-4)


def test_a_local_gpt2_checkpoint_is_studied_without_training(tmp_path: Path) -> None:
    task = SeqcontTask()
    save_tiny_gpt2(tmp_path / "gpt2", list(task.vocab), seed=0)
    workspace = Workspace(tmp_path / "ws")
    run = run_study("seqcont", workspace, "tiny", progress=False, model=tmp_path / "gpt2")
    assert str(tmp_path / "gpt2") in run.report_path.read_text()
    graph = read(run, "graph")
    assert (graph["n_layers"], graph["n_heads"]) == (2, 4)
    assert set(read(run, "behaviour")) == set(PAPER_FAMILIES)
    assert not any((tmp_path / "ws").glob("seqcont-*")), "no model was trained"


def test_answers_that_are_not_one_token_are_refused(tmp_path: Path) -> None:
    task = SeqcontTask()
    words = [w for w in task.vocab if w != "seven"]  # 'seven' falls back to [UNK] pieces
    save_tiny_gpt2(tmp_path / "gpt2", words)
    tokenizer = load_pretrained_tokenizer(tmp_path / "gpt2")
    encoder = an.WordEncoder(task, tokenizer)
    encoder.require_family("months")  # fine
    prompts = an.family_prompts(task, encoder, "months", 4, seed=0)
    assert (prompts.clean[:, 0] == tokenizer.bos_token_id).all()  # BOS first, as TransformerLens does
    assert prompts.clean.shape[1] == task.seq_len  # BOS + every word but the answer
    words = task.words(task.sample(4, torch.Generator().manual_seed(0), family="months"))[0]
    retokenized = tokenizer.encode(
        " " + " ".join(words[:-1]).replace(" .", "."), add_special_tokens=False
    )
    assert len(retokenized) == task.seq_len - 1  # one token per word and period
    with pytest.raises(TokenError, match="'seven' is not a single token"):
        encoder.require_family("number_words")
    assert load_pretrained(tmp_path / "gpt2") is not None


def test_bad_study_input_is_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UnknownNameError, match="seqcont study preset"):
        study_config("huge")
    with pytest.raises(ConfigError, match="--model applies to the seqcont and regions studies only"):
        run_study("maze", Workspace(tmp_path), "tiny", model=tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        main(["study", "seqcont", "--preset", "tiny", "--model", str(tmp_path), "-w", str(tmp_path)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and "not a Hugging Face checkpoint" in message
    assert list(tmp_path.iterdir()) == [], "a refused --model leaves the workspace untouched"


def test_predict_prints_whole_sentences(
    seqcont_study_run: Run, capsys: pytest.CaptureFixture[str]
) -> None:
    """`tinylens predict` on a seqcont model shows the prompt and the answer as one sentence."""
    cfg = study_config("tiny")
    assert cfg.model is not None
    prompt = "Van done in 1. Hat done in 2. Ring done in 3. Desk done in 4. Sun done in"
    workspace = str(seqcont_study_run.workspace.root)
    main(["predict", cfg.model.default_name(), prompt, "-w", workspace])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith(prompt + " 5  true")
    assert lines[0].startswith(prompt + " ") and lines[0].endswith("  model")


def test_a_model_that_barely_continues_passes_no_claim(seqcont_study_run: Run) -> None:
    """The tiny preset's 60-step model is right on a few prompts at most: no claim may hold."""
    behaviour = read(seqcont_study_run, "behaviour")
    assert max(b["accuracy"] for b in behaviour.values()) < 0.5
    assert [c["claim"] for c in read(seqcont_study_run, "claims") if c["holds"]] == []
