"""Study ``seqcont``: reproduce Lan & Barez, "Interpreting Shared Circuits for Ordered Sequence
Prediction in a Large Language Model" (2023).

Background:
    GPT-2 small continues "Van done in 1. Hat done in 2. … Sun done in" with " 5", and the same
    for number words and months. Mean-ablating heads and MLPs and pruning iteratively finds a
    circuit per family that keeps 81% of the logit difference (answer − last member shown); eight
    heads are shared by all three families; a late "successor" head and the MLP after it do the
    increment; one family's circuit largely works on another's prompts, an unrelated circuit not.

    This study trains a small word-level language model on the five families (no download) or,
    with ``--model``, opens a local GPT-2 checkpoint directory, and measures each finding with the
    circuit tools of :mod:`tinylens.analysis.circuits`: node pruning then edge pruning, EAP-IG
    faithfulness curves, cross-family scores, random-circuit controls and successor scores, into
    ``results/*.json``, ``figures/*.png``, ``results/claims.json`` and ``report.html``.

Usage:
    tinylens study seqcont --preset quick
    tinylens study seqcont --model ./gpt2            # a folder written by save_pretrained
    run = run_seqcont_study(Workspace("runs"), "quick")

References:
    Lan & Barez 2023, arXiv:2311.04131; Gould et al. 2023 (successor heads); Syed et al. 2023 and
    Hanna et al. 2024 (EAP, EAP-IG).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinylens import runs
from tinylens.analysis.circuits import overlap
from tinylens.analysis.graph import ComponentGraph
from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.errors import ConfigError, TinylensError, unknown_name
from tinylens.model import load_pretrained, load_pretrained_tokenizer
from tinylens.store import Run, Workspace
from tinylens.studies import seqcont_analyses as an
from tinylens.studies import seqcont_figures as figs
from tinylens.studies.common import study_run
from tinylens.studies.report import Claim, render_report
from tinylens.tasks.seqcont import FAMILIES, PAPER_FAMILIES, SeqcontTask


@dataclass(frozen=True)
class SeqcontStudyConfig:
    """What the study trains (or loads) and how much each analysis uses."""

    preset: str
    model: RunConfig | None
    """The language model to train; None when a checkpoint is given."""
    checkpoint: str | None = None
    """A local Hugging Face checkpoint directory (GPT-2) to study instead of training."""
    families: tuple[str, ...] = PAPER_FAMILIES
    n_prompts: int = 96
    """Prompts per family (clean, plus as many corrupted ones)."""
    min_share: float = 0.8
    """Pruning keeps this share of the full model's logit difference."""
    ig_steps: int = 5
    n_random_circuits: int = 20
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STUDY_PRESETS = ("quick", "paper", "tiny")

PAPER: dict[str, dict[str, Any]] = {
    "model": {"n_layers": 6, "n_heads": 8, "d_model": 256, "d_head": 32, "d_mlp": 1024},
    "train": {"steps": 20_000, "lr": 5e-4, "warmup_steps": 500},
}
"""Without ``--model``, a larger language model (GPU-sized); the paper's own is GPT-2 small."""


def study_config(preset: str, checkpoint: str | Path | None = None) -> SeqcontStudyConfig:
    """``quick``: a 3-layer word-level model trained in minutes on a CPU. ``paper``: a 6-layer
    d_model 256 model (GPU-sized) — or GPT-2 small itself with ``--model``. ``tiny``: a smoke run."""
    if preset not in STUDY_PRESETS:
        raise unknown_name("seqcont study preset", preset, STUDY_PRESETS)
    small = {"n_prompts": 32, "n_random_circuits": 4, "ig_steps": 2} if preset == "tiny" else {}
    if checkpoint is not None:
        return SeqcontStudyConfig(preset, None, str(Path(checkpoint).resolve()), **small)
    if preset == "tiny":
        overrides = {
            "model": {"n_layers": 2},
            "train": {"steps": 60, "eval_every": 30, "eval_size": 64, "save_every": 30},
        }
        return SeqcontStudyConfig(
            preset, make_run_config("seqcont", "tiny", overrides=overrides), **small
        )
    if preset == "quick":
        return SeqcontStudyConfig(preset, make_run_config("seqcont", "cpu"))
    return SeqcontStudyConfig(preset, make_run_config("seqcont", "cpu", overrides=PAPER))


def run_seqcont_study(
    workspace: Workspace,
    preset: str = "quick",
    *,
    progress: bool = True,
    model: str | Path | None = None,
) -> Run:
    """Train (or open) the model, find and compare the circuits, write results and the report."""
    cfg = study_config(preset, model)
    started = time.perf_counter()
    task = SeqcontTask()
    if cfg.checkpoint is not None:
        lm = load_pretrained(cfg.checkpoint)
        encoder = an.WordEncoder(task, load_pretrained_tokenizer(cfg.checkpoint))
        source = f"checkpoint {cfg.checkpoint}"
    else:
        assert cfg.model is not None
        result = runs.train(workspace, cfg.model, progress=progress)
        if result.status != "done":
            raise TinylensError(
                f"training of the seqcont model stopped at step {result.step}; continue it with "
                f"`tinylens resume {result.run}`, then run the study again"
            )
        trained = runs.load_trained(workspace, result.run)
        lm = trained.model
        encoder = an.WordEncoder(task)
        m = cfg.model.model
        source = (
            f"run {trained.run.name} ({m.n_layers} layers × {m.n_heads} heads, d_model "
            f"{m.d_model}, {cfg.model.train.steps} steps on {', '.join(task.families)})"
        )
    study = study_run(workspace, "seqcont", cfg.preset, cfg.to_dict())
    graph = ComponentGraph(lm)
    prompts = {
        f: an.family_prompts(task, encoder, f, cfg.n_prompts, derive_seed(cfg.seed, f"seqcont-{f}"))
        for f in cfg.families
    }

    # -- measurements --
    behaviour = {f: an.behaviour(lm, p) for f, p in prompts.items()}
    # a circuit explains a behaviour: families the model does not continue are reported, not pruned
    studied = [f for f, b in behaviour.items() if b["logit_diff"] > 0]
    if not studied:
        raise ConfigError(
            f"the model prefers the next member on none of {list(prompts)} (mean logit difference "
            "≤ 0 on each), so there is no behaviour to find a circuit for; train longer"
        )
    circuits = {
        f: an.family_circuit(lm, graph, prompts[f], min_share=cfg.min_share, ig_steps=cfg.ig_steps)
        for f in studied
    }
    first = studied[0]
    results = {
        "behaviour": behaviour,
        "circuits": circuits,
        "cross_family": an.cross_family(graph, circuits, prompts),
        "random_circuits": an.random_circuits(
            graph, circuits[first], prompts[first], cfg.n_random_circuits, derive_seed(cfg.seed, "rc")
        ),
        "successor": an.successor_heads(graph, encoder, studied),
        "graph": {
            "n_layers": graph.n_layers,
            "n_heads": graph.n_heads,
            "has_mlp": graph.has_mlp,
            "n_edges": len(graph.edges),
        },
        "not_studied": [f for f in cfg.families if f not in studied],
    }
    results["shared"] = shared_components(circuits)
    for name, value in results.items():
        study.write_result(name, value)
    claims = check_claims(results)
    study.write_result("claims", [c.to_dict() for c in claims])

    # -- report --
    meta = [
        f"preset {preset}; model: {source}",
        f"{cfg.n_prompts} prompts per family ({', '.join(cfg.families)}), corrupted prompts with "
        f"random members; pruning keeps {cfg.min_share:.0%}; EAP-IG with {cfg.ig_steps} steps; "
        f"the study took {time.perf_counter() - started:.0f} s (training included, where it ran now)",
        "example prompts: " + " | ".join(prompts[first].text[:2]),
    ]
    html, pngs = render_report(
        "Interpreting Shared Circuits for Ordered Sequence Prediction — reproduction",
        meta,
        claims,
        figs.sections(results),
    )
    for name, png in pngs.items():
        study.write_figure_png(name, png)
    study.write_report(html)
    study.set_status("done")
    return study


def shared_components(circuits: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Heads and MLPs in every family's circuit, and in each pair's."""
    families = list(circuits)
    sets = {f: set(c["nodes"]) for f, c in circuits.items()}
    common = set.intersection(*sets.values()) if sets else set()
    return {
        "all": sorted(common),
        "heads": sorted(n for n in common if n.startswith("A")),
        "mlps": sorted(n for n in common if n.startswith("M")),
        "pairs": {
            f"{a}|{b}": {"common": sorted(sets[a] & sets[b]), **overlap(sets[a], sets[b])}
            for i, a in enumerate(families)
            for b in families[i + 1 :]
        },
    }


# -- claims ---------------------------------------------------------------------------------------


def check_claims(results: dict[str, Any]) -> list[Claim]:
    """Each finding of STUDIES.md against our measurements; each rule is stated in its claim."""
    circuits, shared = results["circuits"], results["shared"]
    families = list(circuits)
    first = families[0]
    n_heads_total = results["graph"]["n_layers"] * results["graph"]["n_heads"]
    c = circuits[first]
    claims = [
        Claim(
            f"A small circuit does the {first} task",
            "numerals: 14 of 144 heads + most MLPs keep 81% of the logit difference",
            f"{len(c['heads'])} of {n_heads_total} heads + {len(c['mlps'])} MLPs keep "
            f"{c['node_share']:.0%}; edge pruning leaves {len(c['edges'])} of "
            f"{c['n_edges_graph']} edges keeping {c['edge_share']:.0%} (all ablated: "
            f"{c['ablated_all_share']:.0%})",
            c["node_share"] >= 0.8 and len(c["heads"]) <= n_heads_total / 2,
            "the pruned circuit keeps ≥ 80% with at most half of the heads",
        )
    ]
    several = len(families) >= 2  # with one family, "shared" would be that circuit itself
    smallest = min(len(circuits[f]["heads"]) for f in families)
    claims.append(
        Claim(
            "The families share their heads",
            "eight heads are in all three circuits",
            (
                f"{len(shared['heads'])} heads in all {len(families)} circuits "
                f"({', '.join(shared['heads']) or 'none'}); circuit sizes "
                + ", ".join(f"{f} {len(circuits[f]['heads'])}" for f in families)
            )
            if several
            else f"not measured: the model continues only {first}",
            several and len(shared["heads"]) >= 1 and len(shared["heads"]) >= smallest / 2,
            "at least half of the smallest circuit's heads are in every circuit (of ≥ 2 families)",
        )
    )
    succ = results["successor"]
    in_all = several and succ["top"] in shared["heads"]
    claims.append(
        Claim(
            "A successor head does the increment",
            "one late head's OV circuit maps each member to the next, inside the shared circuit",
            f"top successor head {succ['top']}: next member ranked first for "
            f"{succ['top_score']:.0%} of members (chance {succ['chance']:.0%}); "
            f"{'in' if in_all else 'not in'} every circuit"
            + ("" if several else " (only one family's circuit found)"),
            succ["top_score"] >= 0.5 and in_all,
            "the best head ranks the successor first for ≥ 50% of members and is in the circuit of "
            "every family (≥ 2 families)",
        )
    )
    cross = results["cross_family"]
    random = results["random_circuits"]
    if len(families) < 2:
        claims.append(
            Claim(
                "One family's circuit works on another's prompts",
                "number-word circuit: 87% on numeral prompts; an unrelated (IOI) circuit ≈ −7%",
                f"not measured: the model continues only {first}",
                False,
                "needs two families the model continues",
            )
        )
        return claims
    if "number_words" in families and "numerals" in families:
        i, j = families.index("number_words"), families.index("numerals")
        transfer, pair = cross["share"][i][j], "number-word circuit on numeral prompts"
    else:
        transfer, pair = cross["share"][1][0], f"{families[1]} circuit on {first} prompts"
    claims.append(
        Claim(
            "One family's circuit works on another's prompts",
            "number-word circuit: 87% on numeral prompts; an unrelated (IOI) circuit ≈ −7%",
            f"{pair}: {transfer:.0%}; random circuits of the {first} circuit's size: "
            f"{random['mean']:.0%} on average over {len(random['shares'])}",
            transfer >= 0.7 and transfer - random["mean"] >= 0.4,
            "≥ 70% kept across families and ≥ 40 points above same-size random circuits",
        )
    )
    return claims


__all__ = ["FAMILIES", "STUDY_PRESETS", "run_seqcont_study", "study_config"]
