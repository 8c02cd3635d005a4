"""Study ``addition``: reproduce Quirke & Barez, "Understanding Addition in Transformers" (2023).

Background:
    A 1-layer transformer trained on 5-digit addition learns each answer digit on its own loss curve,
    computes each digit at the token before it is emitted, splits the work across its heads, and
    fails mostly on long carry cascades, which a 2-layer model solves. This study trains (or reuses)
    a 1-layer and a 2-layer model, measures each of those claims, and writes ``results/*.json``,
    ``figures/*.png``, ``results/claims.json`` and a self-contained ``report.html``.

Usage:
    tinylens study addition --preset quick        # CPU, minutes
    run = run_addition_study(Workspace("runs"), "quick")

References:
    Quirke & Barez 2023, arXiv:2310.13121; github.com/PhilipQuirke/verified_transformers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tinylens import runs
from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.errors import TinylensError, unknown_name
from tinylens.evaluation import evaluate
from tinylens.store import Run, Workspace
from tinylens.studies import addition_analyses as an
from tinylens.studies import addition_figures as figs
from tinylens.studies.common import study_run
from tinylens.studies.report import Claim, render_report
from tinylens.tasks import AdditionTask


@dataclass(frozen=True)
class AdditionStudyConfig:
    """What the study trains and how many questions each analysis uses."""

    preset: str
    """``quick`` (CPU presets) or ``paper`` (the paper's width and recipe)."""
    one_layer: RunConfig
    """The 1-layer model the paper dissects."""
    two_layer: RunConfig
    """The 2-layer model that should solve the cascades the 1-layer one misses."""
    n_eval: int = 10_000
    """Fresh uniform questions for accuracy and the high-loss search."""
    n_analysis: int = 2_000
    """Fresh uniform questions for attention and ablations."""
    n_per_class: int = 300
    """Curated questions per cascade class S0…S5."""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STUDY_PRESETS = ("quick", "paper", "tiny")


def study_config(preset: str) -> AdditionStudyConfig:
    """``quick``: CPU presets, minutes. ``paper``: the paper's width and recipe (GPU-sized).
    ``tiny``: a seconds-long smoke run of the whole pipeline; its claims mean nothing."""
    if preset not in STUDY_PRESETS:
        raise unknown_name("addition study preset", preset, STUDY_PRESETS)
    if preset == "tiny":
        short = {"train": {"steps": 150, "eval_every": 50, "eval_size": 256, "save_every": 50}}
        two = {"model": {"n_layers": 2}, **short}
        return AdditionStudyConfig(
            preset=preset,
            one_layer=make_run_config("addition", "tiny", overrides=short),
            two_layer=make_run_config("addition", "tiny", overrides=two),
            n_eval=500,
            n_analysis=200,
            n_per_class=40,
        )
    base = "cpu" if preset == "quick" else "quirke"
    return AdditionStudyConfig(
        preset=preset,
        one_layer=make_run_config("addition", base),
        two_layer=make_run_config("addition", base, overrides={"model": {"n_layers": 2}}),
    )


def run_addition_study(workspace: Workspace, preset: str = "quick", *, progress: bool = True) -> Run:
    """Train or reuse both models, run every analysis, write results, figures and the report."""
    cfg = study_config(preset)
    started = time.perf_counter()
    trained = {}
    for key, run_cfg in (("1-layer", cfg.one_layer), ("2-layer", cfg.two_layer)):
        result = runs.train(workspace, run_cfg, progress=progress)
        if result.status != "done":
            raise TinylensError(
                f"training of the {key} model stopped at step {result.step}; continue it with "
                f"`tinylens resume {result.run}`, then run the study again"
            )
        trained[key] = runs.load_trained(workspace, result.run)
    study = study_run(workspace, "addition", cfg.preset, cfg.to_dict())
    task = trained["1-layer"].task
    assert isinstance(task, AdditionTask)
    rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "addition-study"))
    eval_tokens = task.sample(cfg.n_eval, rng)
    analysis_tokens = task.sample(cfg.n_analysis, rng)
    curated = {c: task.sample_case(c, cfg.n_per_class, rng) for c in range(6)}
    one, two = trained["1-layer"].model, trained["2-layer"].model

    # -- measurements --
    evals = {key: evaluate(t.model, task, eval_tokens) for key, t in trained.items()}
    curves = an.digit_curves(trained["1-layer"].run, task)
    classes = {key: an.class_accuracy(t.model, task, curated) for key, t in trained.items()}
    residue = an.error_residue(one, task, eval_tokens)
    staircase = an.attention_staircase(one, task, analysis_tokens)
    positions = {key: an.position_ablation(t.model, task, analysis_tokens) for key, t in trained.items()}
    heads = an.head_ablation(one, task, analysis_tokens)
    worst = an.high_loss_cases(one, two, task, eval_tokens)
    results = {
        "eval": {key: ev.to_dict() for key, ev in evals.items()},
        "digit_curves": curves,
        "class_accuracy": classes,
        "error_residue": residue,
        "attention_staircase": staircase,
        "position_ablation": positions,
        "head_ablation": heads,
        "high_loss_cases": worst,
    }
    for name, value in results.items():
        study.write_result(name, value)

    claims = check_claims(evals["1-layer"].exact, curves, classes, residue, positions, heads)
    study.write_result("claims", [c.to_dict() for c in claims])

    # -- report --
    meta = [
        f"preset {preset}; 1-layer run {trained['1-layer'].run.name}, "
        f"2-layer run {trained['2-layer'].run.name}",
        f"{cfg.n_eval} fresh questions for accuracy, {cfg.n_analysis} for attention and ablation, "
        f"{cfg.n_per_class} curated per class; the study took "
        f"{time.perf_counter() - started:.0f} s (training included, where it ran now)",
    ]
    sections = figs.sections(results, task)
    html, pngs = render_report(
        "Understanding Addition in Transformers — reproduction", meta, claims, sections
    )
    for name, png in pngs.items():
        study.write_figure_png(name, png)
    study.write_report(html)
    study.set_status("done")
    return study


# -- claims ---------------------------------------------------------------------------------------


def check_claims(
    exact_1l: float,
    curves: dict[str, Any],
    classes: dict[str, dict[str, Any]],
    residue: dict[str, Any],
    positions: dict[str, dict[str, Any]],
    heads: dict[str, Any],
) -> list[Claim]:
    """Each claim of STUDIES.md against our measurements; the rules are stated in each claim."""
    claims = []
    mids = {d: v["mid"] for d, v in curves["digits"].items() if v["drop"] > 0}
    latest = max(mids.values(), default=0)
    spread = (latest - min(mids.values(), default=0)) / max(latest, 1)
    order = ", ".join(f"{d}@{s}" for d, s in sorted(mids.items(), key=lambda kv: kv[1])) or "none"
    claims.append(
        Claim(
            "Each answer digit's loss falls on its own curve, semi-independently, in phases",
            "digits learn at different times",
            f"half-way steps: {order}; spread {spread:.0%} of the latest",
            spread >= 0.2 and len(set(mids.values())) >= 3,
            "≥ 3 distinct half-way steps, spread ≥ 20% of the latest half-way step",
        )
    )
    pos = positions["1-layer"]
    hits = [d for d, row in pos["most_harmful"].items() if row["position"] == row["expected"]]
    claims.append(
        Claim(
            "Each digit is computed at the token before it is emitted",
            "ablating that position breaks only that digit",
            f"{len(hits)}/{len(pos['most_harmful'])} digits hurt most by their own position; "
            f"mean accuracy there {pos['own_position_acc']:.1%}",
            len(hits) == len(pos["most_harmful"]) and pos["own_position_acc"] < 0.5,
            "for every digit, mean-ablating attention at the position before it hurts it most, "
            "and leaves it < 50% accurate on average (in a 1-layer model no other position can "
            "reach that digit's logits at all; the test is that its own position carries it)",
        )
    )
    losses = [h["loss"] for h in heads["heads"]]
    clean_loss = heads["clean"]["loss"]
    claims.append(
        Claim(
            "The heads split the work: ablating one head raises loss sharply",
            "loss ≈ 0.1 → 3.6–5.1 per ablated head",
            f"clean {clean_loss:.3g}; per head {', '.join(f'{x:.2f}' for x in losses)}",
            min(losses) - clean_loss >= 1.0,
            "every single-head mean ablation raises the loss by ≥ 1 nat over the clean model",
        )
    )
    claims.append(
        Claim(
            "The 1-layer model is accurate",
            "> 99.5% exact match",
            f"{exact_1l:.2%} on fresh uniform questions",
            exact_1l > 0.995,
            "exact match > 99.5%",
        )
    )
    claims.append(
        Claim(
            "The residual errors are almost all cascading US9 cases",
            "almost all",
            f"{residue['us9_share']:.0%} of {residue['wrong_digits']} wrong digits are US9",
            residue["wrong_digits"] > 0 and residue["us9_share"] >= 0.8,
            "≥ 80% of wrongly predicted digits are US9 (and there are errors to count)",
        )
    )
    c1 = classes["1-layer"]["cascades"]
    easy = min(classes["1-layer"]["classes"][c]["exact"] for c in ("S0", "S1"))
    claims.append(
        Claim(
            "The 1-layer model solves only some cascades",
            "≈ 25% of cascades",
            f"{c1:.1%} exact on curated cascades (S2–S5, equal numbers); ≥ {easy:.1%} on S0 and S1",
            c1 <= 0.5 and easy >= 0.9,
            "≤ 50% exact on curated cascade questions while ≥ 90% on each of S0 and S1 "
            "(a model that cannot add at all does not count)",
        )
    )
    c2 = classes["2-layer"]["cascades"]
    claims.append(
        Claim(
            "A 2-layer model solves the cascades",
            "all of them",
            f"{c2:.1%} exact on curated cascades (S2–S5)",
            c2 >= 0.99,
            "≥ 99% exact on curated cascade questions",
        )
    )
    return claims
