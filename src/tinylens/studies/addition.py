"""Study ``addition``: reproduce Quirke & Barez, "Understanding Addition in Transformers" (2023).

Background:
    A 1-layer transformer trained on 5-digit addition learns each answer digit on its own loss curve,
    computes each digit at the token before it is emitted, splits the work across its heads, and
    fails mostly on long carry cascades, which a 2-layer model solves. This study trains (or reuses)
    a 1-layer and a 2-layer model, measures each of those claims, and writes ``results/*.json``,
    ``figures/*.png``, ``results/claims.json`` and a self-contained ``report.html``.

Usage:
    tinylens study addition --preset quick        # CPU, minutes
    run = run_study("addition", Workspace("runs"), "quick")

References:
    Quirke & Barez 2023, arXiv:2310.13121; github.com/PhilipQuirke/verified_transformers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.errors import unknown_name
from tinylens.evaluation import evaluate
from tinylens.studies import addition_analyses as an
from tinylens.studies import addition_figures as figs
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.framework import Study, StudyContext
from tinylens.studies.report import Section
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


@dataclass(frozen=True)
class AdditionResult:
    """Every measurement of the addition study (JSON-ready values, see each analysis)."""

    config: AdditionStudyConfig
    task: AdditionTask
    runs: dict[str, str]
    """Model role ("1-layer", "2-layer") → its training run's name."""
    eval: dict[str, dict[str, Any]]
    """Role → :meth:`EvalResult.to_dict` on fresh uniform questions."""
    digit_curves: dict[str, Any]
    """:func:`addition_analyses.digit_curves` of the 1-layer run."""
    class_accuracy: dict[str, dict[str, Any]]
    """Role → :func:`addition_analyses.class_accuracy`."""
    error_residue: dict[str, Any]
    attention_staircase: dict[str, Any]
    position_ablation: dict[str, dict[str, Any]]
    """Role → :func:`addition_analyses.position_ablation`."""
    head_ablation: dict[str, Any]
    high_loss_cases: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "eval": self.eval,
            "digit_curves": self.digit_curves,
            "class_accuracy": self.class_accuracy,
            "error_residue": self.error_residue,
            "attention_staircase": self.attention_staircase,
            "position_ablation": self.position_ablation,
            "head_ablation": self.head_ablation,
            "high_loss_cases": self.high_loss_cases,
        }

    def meta(self) -> list[str]:
        cfg = self.config
        return [
            f"1-layer run {self.runs['1-layer']}, 2-layer run {self.runs['2-layer']}",
            f"{cfg.n_eval} fresh questions for accuracy, {cfg.n_analysis} for attention and "
            f"ablation, {cfg.n_per_class} curated per class",
        ]


def measure(ctx: StudyContext, cfg: AdditionStudyConfig) -> AdditionResult:
    """Train or reuse both models and run every analysis."""
    trained = {
        key: ctx.trained(run_cfg, f"{key} model")
        for key, run_cfg in (("1-layer", cfg.one_layer), ("2-layer", cfg.two_layer))
    }
    task = trained["1-layer"].task
    assert isinstance(task, AdditionTask)
    rng = torch.Generator().manual_seed(derive_seed(cfg.seed, "addition-study"))
    eval_tokens = task.sample(cfg.n_eval, rng)
    analysis_tokens = task.sample(cfg.n_analysis, rng)
    curated = {c: task.sample_case(c, cfg.n_per_class, rng) for c in range(6)}
    one, two = trained["1-layer"].model, trained["2-layer"].model
    one_run = trained["1-layer"].run
    return AdditionResult(
        config=cfg,
        task=task,
        runs={key: t.run.name for key, t in trained.items()},
        eval={key: evaluate(t.model, task, eval_tokens).to_dict() for key, t in trained.items()},
        digit_curves=an.digit_curves(
            one_run.metrics("train/loss/"), one_run.metrics("eval/loss/"), task
        ),
        class_accuracy={key: an.class_accuracy(t.model, task, curated) for key, t in trained.items()},
        error_residue=an.error_residue(one, task, eval_tokens),
        attention_staircase=an.attention_staircase(one, task, analysis_tokens),
        position_ablation={
            key: an.position_ablation(t.model, task, analysis_tokens) for key, t in trained.items()
        },
        head_ablation=an.head_ablation(one, task, analysis_tokens),
        high_loss_cases=an.high_loss_cases(one, two, task, eval_tokens),
    )


def sections(result: AdditionResult) -> list[Section]:
    return figs.sections(result.to_json(), result.task)


# -- claims ---------------------------------------------------------------------------------------


PHASE_MIN_DROP = 1.0
"""A digit's smoothed log-loss must fall by ≥ 1 nat (loss to ≤ 37% of its start) to count as a
phase: a model that learned nothing has wiggles of 0.1–0.2 nats that are no phase change."""


def check_claims(result: AdditionResult) -> list[Claim]:
    """Each claim of STUDIES.md against our measurements; the rule is stated in each claim."""
    one = "1-layer"
    return [
        phases_claim(result.digit_curves),
        own_position_claim(result.position_ablation[one]),
        heads_claim(result.head_ablation),
        accuracy_claim(result.eval[one]["exact"]),
        residue_claim(result.error_residue),
        some_cascades_claim(result.class_accuracy[one]),
        two_layer_claim(result.class_accuracy["2-layer"]),
    ]


def phases_claim(curves: dict[str, Any]) -> Claim:
    """Digits learn on their own curves: distinct half-way steps of digits whose loss really falls."""
    digits = curves["digits"]
    mids = {d: v["mid"] for d, v in digits.items() if v["drop"] >= PHASE_MIN_DROP}
    latest = max(mids.values(), default=0)
    spread = (latest - min(mids.values(), default=0)) / max(latest, 1)
    order = ", ".join(f"{d}@{s}" for d, s in sorted(mids.items(), key=lambda kv: kv[1])) or "none"
    return Claim.of(
        "Each answer digit's loss falls on its own curve, semi-independently, in phases",
        "digits learn at different times",
        f"{len(mids)} of {len(digits)} digits' log-loss falls ≥ {PHASE_MIN_DROP:g} nat; "
        f"half-way steps: {order}; spread {spread:.0%} of the latest",
        [
            Condition(
                f"digits with a real fall (≥ {PHASE_MIN_DROP:g} nat of log-loss)",
                len(mids),
                ">=",
                3,
                "{:d}",
            ),
            Condition("distinct half-way steps", len(set(mids.values())), ">=", 3, "{:d}"),
            Condition("spread of half-way steps", spread, ">=", 0.2, "{:.0%} of the latest"),
        ],
    )


def own_position_claim(pos: dict[str, Any]) -> Claim:
    """Ablating the position before a digit breaks that digit most (1-layer model)."""
    hits = [d for d, row in pos["most_harmful"].items() if row["position"] == row["expected"]]
    total = len(pos["most_harmful"])
    clean = float(np.mean(pos["clean"]))
    return Claim.of(
        "Each digit is computed at the token before it is emitted",
        "ablating that position breaks only that digit",
        f"{len(hits)}/{total} digits hurt most by their own position; "
        f"mean accuracy there {pos['own_position_acc']:.1%} (clean {clean:.1%})",
        [
            Condition("mean clean accuracy of the digits", clean, ">=", 0.9, "{:.0%}"),
            Condition("digits hurt most by their own position", len(hits), "==", total, "{:d}"),
            Condition("mean accuracy at the own position", pos["own_position_acc"], "<", 0.5, "{:.0%}"),
        ],
        note="mean-ablating attention at the position before each digit; in a 1-layer model no "
        "other position can reach that digit's logits at all, so the test is that its own "
        "position carries what the model knows; a model that cannot add does not count",
    )


def heads_claim(heads: dict[str, Any]) -> Claim:
    """Every single-head mean ablation raises the loss sharply."""
    losses = [h["loss"] for h in heads["heads"]]
    clean_loss = heads["clean"]["loss"]
    return Claim.of(
        "The heads split the work: ablating one head raises loss sharply",
        "loss ≈ 0.1 → 3.6–5.1 per ablated head",
        f"clean {clean_loss:.3g}; per head {', '.join(f'{x:.2f}' for x in losses)}",
        [
            Condition("clean loss", clean_loss, "<=", 0.5, "{:.1f} nat"),
            Condition(
                "smallest rise in loss when one head is mean-ablated",
                min(losses) - clean_loss,
                ">=",
                1.0,
                "{:.1f} nat",
            ),
        ],
        note="the clean bound keeps a model that has not learned to add from passing",
    )


def accuracy_claim(exact_1l: float) -> Claim:
    return Claim.of(
        "The 1-layer model is accurate",
        "> 99.5% exact match",
        f"{exact_1l:.2%} on fresh uniform questions",
        [Condition("exact match", exact_1l, ">", 0.995, "{:.1%}")],
    )


def residue_claim(residue: dict[str, Any]) -> Claim:
    return Claim.of(
        "The residual errors are almost all cascading US9 cases",
        "almost all",
        f"{residue['us9_share']:.0%} of {residue['wrong_digits']} wrong digits are US9",
        [
            Condition("wrongly predicted digits", residue["wrong_digits"], ">", 0, "{:d}"),
            Condition("share of them that are US9", residue["us9_share"], ">=", 0.8, "{:.0%}"),
        ],
    )


def some_cascades_claim(classes_1l: dict[str, Any]) -> Claim:
    c1 = classes_1l["cascades"]
    easy = min(classes_1l["classes"][c]["exact"] for c in ("S0", "S1"))
    return Claim.of(
        "The 1-layer model solves only some cascades",
        "≈ 25% of cascades",
        f"{c1:.1%} exact on curated cascades (S2–S5, equal numbers); ≥ {easy:.1%} on S0 and S1",
        [
            Condition("exact match on curated cascades (S2–S5)", c1, "<=", 0.5, "{:.0%}"),
            Condition("exact match on each of S0 and S1", easy, ">=", 0.9, "{:.0%}"),
        ],
        note="a model that cannot add at all does not count",
    )


def two_layer_claim(classes_2l: dict[str, Any]) -> Claim:
    c2 = classes_2l["cascades"]
    return Claim.at_least(
        "A 2-layer model solves the cascades",
        "all of them",
        c2,
        0.99,
        "exact match on curated cascades (S2–S5)",
        fmt="{:.0%}",
        measured=f"{c2:.1%} exact on curated cascades (S2–S5)",
    )


STUDY = Study(
    name="addition",
    title="Understanding Addition in Transformers — reproduction",
    summary="Quirke & Barez 2023: how a 1-layer transformer adds 5-digit integers",
    presets=STUDY_PRESETS,
    configure=lambda preset, _inputs: study_config(preset),
    measure=measure,
    claims=check_claims,
    sections=sections,
)
