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
    run = run_study("seqcont", Workspace("runs"), "quick")

References:
    Lan & Barez 2023, arXiv:2311.04131; Gould et al. 2023 (successor heads); Syed et al. 2023 and
    Hanna et al. 2024 (EAP, EAP-IG).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tinylens.analysis.circuits import overlap
from tinylens.analysis.graph import ComponentGraph
from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.errors import ConfigError, unknown_name
from tinylens.model import check_pretrained_folder, load_pretrained, load_pretrained_tokenizer
from tinylens.studies import seqcont_analyses as an
from tinylens.studies import seqcont_figures as figs
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.framework import Study, StudyContext
from tinylens.studies.report import Section
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
        folder = check_pretrained_folder(checkpoint)  # before the study's run folder exists
        return SeqcontStudyConfig(preset, None, str(folder.resolve()), **small)
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


@dataclass(frozen=True)
class SeqcontResult:
    """Every measurement of the seqcont study (JSON-ready values, see each analysis)."""

    config: SeqcontStudyConfig
    source: str
    """Which model: a run with its size, or a checkpoint folder."""
    example_prompts: tuple[str, ...]
    behaviour: dict[str, Any]
    """Family → mean logit difference and accuracy of the full model."""
    circuits: dict[str, dict[str, Any]]
    """Family → its pruned circuit (families the model continues only)."""
    cross_family: dict[str, Any]
    random_circuits: dict[str, Any]
    successor: dict[str, Any]
    graph: dict[str, Any]
    not_studied: list[str]
    """Families the model does not continue (logit difference ≤ 0): reported, not pruned."""
    shared: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "behaviour": self.behaviour,
            "circuits": self.circuits,
            "cross_family": self.cross_family,
            "random_circuits": self.random_circuits,
            "successor": self.successor,
            "graph": self.graph,
            "not_studied": self.not_studied,
            "shared": self.shared,
        }

    def meta(self) -> list[str]:
        cfg = self.config
        return [
            f"model: {self.source}",
            f"{cfg.n_prompts} prompts per family ({', '.join(cfg.families)}), corrupted prompts "
            f"with random members; pruning keeps {cfg.min_share:.0%}; EAP-IG with "
            f"{cfg.ig_steps} steps",
            "example prompts: " + " | ".join(self.example_prompts),
        ]


def measure(ctx: StudyContext, cfg: SeqcontStudyConfig) -> SeqcontResult:
    """Train (or open) the model and find, compare and control the circuits."""
    task = SeqcontTask()
    if cfg.checkpoint is not None:
        lm = load_pretrained(cfg.checkpoint)
        encoder = an.WordEncoder(task, load_pretrained_tokenizer(cfg.checkpoint))
        source = f"checkpoint {cfg.checkpoint}"
    else:
        assert cfg.model is not None
        trained = ctx.trained(cfg.model, "seqcont model")
        lm = trained.model
        encoder = an.WordEncoder(task)
        m = cfg.model.model
        source = (
            f"run {trained.run.name} ({m.n_layers} layers × {m.n_heads} heads, d_model "
            f"{m.d_model}, {cfg.model.train.steps} steps on {', '.join(task.families)})"
        )
    graph = ComponentGraph(lm)
    prompts = {
        f: an.family_prompts(task, encoder, f, cfg.n_prompts, derive_seed(cfg.seed, f"seqcont-{f}"))
        for f in cfg.families
    }
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
    return SeqcontResult(
        config=cfg,
        source=source,
        example_prompts=tuple(prompts[first].text[:2]),
        behaviour=behaviour,
        circuits=circuits,
        cross_family=an.cross_family(graph, circuits, prompts),
        random_circuits=an.random_circuits(
            graph, circuits[first], prompts[first], cfg.n_random_circuits, derive_seed(cfg.seed, "rc")
        ),
        successor=an.successor_heads(graph, encoder, studied),
        graph={
            "n_layers": graph.n_layers,
            "n_heads": graph.n_heads,
            "has_mlp": graph.has_mlp,
            "n_edges": len(graph.edges),
        },
        not_studied=[f for f in cfg.families if f not in studied],
        shared=shared_components(circuits),
    )


def sections(result: SeqcontResult) -> list[Section]:
    return figs.sections(result.to_json())


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


def check_claims(result: SeqcontResult) -> list[Claim]:
    """Each finding of STUDIES.md against our measurements; the rule is stated in each claim."""
    n_heads_total = result.graph["n_layers"] * result.graph["n_heads"]
    competent = competent_families(result.behaviour)
    return [
        small_circuit_claim(result.circuits, result.behaviour, n_heads_total),
        shared_heads_claim(result.circuits, result.shared, competent),
        successor_claim(result.circuits, result.shared, result.successor, competent),
        transfer_claim(result.circuits, result.cross_family, result.random_circuits, competent),
    ]


MIN_ACCURACY = 0.5
"""A family counts as done by the model when its top-1 accuracy on the family's prompts reaches
this: a circuit that keeps most of a logit difference the model barely has explains nothing
(a 60-step model passed "a small circuit does the task" at 3% accuracy without this)."""


_COMPETENT = f"families the model continues (top-1 accuracy ≥ {MIN_ACCURACY:.0%})"


def competent_families(behaviour: dict[str, dict[str, Any]]) -> list[str]:
    """Families whose next member the full model predicts top-1 at least :data:`MIN_ACCURACY`."""
    return [f for f, b in behaviour.items() if b["accuracy"] >= MIN_ACCURACY]


def small_circuit_claim(
    circuits: dict[str, dict[str, Any]], behaviour: dict[str, dict[str, Any]], n_heads_total: int
) -> Claim:
    first = next(iter(circuits))
    c = circuits[first]
    accuracy = behaviour[first]["accuracy"]
    return Claim.of(
        f"A small circuit does the {first} task",
        "numerals: 14 of 144 heads + most MLPs keep 81% of the logit difference",
        f"{len(c['heads'])} of {n_heads_total} heads + {len(c['mlps'])} MLPs keep "
        f"{c['node_share']:.0%}; edge pruning leaves {len(c['edges'])} of "
        f"{c['n_edges_graph']} edges keeping {c['edge_share']:.0%} (all ablated: "
        f"{c['ablated_all_share']:.0%}); the full model is {accuracy:.0%} accurate",
        [
            Condition("the full model's top-1 accuracy", accuracy, ">=", MIN_ACCURACY, "{:.0%}"),
            Condition(
                "share of the logit difference the pruned circuit keeps",
                c["node_share"],
                ">=",
                0.8,
                "{:.0%}",
            ),
            Condition("share of the heads in it", len(c["heads"]) / n_heads_total, "<=", 0.5, "{:.0%}"),
        ],
    )


def shared_heads_claim(
    circuits: dict[str, dict[str, Any]], shared: dict[str, Any], competent: list[str]
) -> Claim:
    claim, paper = "The families share their heads", "eight heads are in all three circuits"
    families = list(circuits)
    if len(families) < 2:  # with one family, "shared" would be that circuit itself
        return Claim.not_measured(claim, paper, f"the model continues only {families[0]}")
    smallest = min(len(circuits[f]["heads"]) for f in families)
    n_shared = len(shared["heads"])
    return Claim.of(
        claim,
        paper,
        f"{n_shared} heads in all {len(families)} circuits "
        f"({', '.join(shared['heads']) or 'none'}); circuit sizes "
        + ", ".join(f"{f} {len(circuits[f]['heads'])}" for f in families),
        [
            Condition(_COMPETENT, len(competent), ">=", 2, "{:d}"),
            Condition("heads in every circuit", n_shared, ">=", 1, "{:d}"),
            Condition(
                "their share of the smallest circuit's heads",
                n_shared / smallest if smallest else 0.0,
                ">=",
                0.5,
                "{:.0%}",
            ),
        ],
    )


def successor_claim(
    circuits: dict[str, dict[str, Any]],
    shared: dict[str, Any],
    succ: dict[str, Any],
    competent: list[str],
) -> Claim:
    several = len(circuits) >= 2
    in_all = several and succ["top"] in shared["heads"]
    return Claim.of(
        "A successor head does the increment",
        "one late head's OV circuit maps each member to the next, inside the shared circuit",
        f"top successor head {succ['top']}: next member ranked first for "
        f"{succ['top_score']:.0%} of members (chance {succ['chance']:.0%}); "
        f"{'in' if in_all else 'not in'} every circuit"
        + ("" if several else " (only one family's circuit found)"),
        [
            Condition(_COMPETENT, len(competent), ">=", 2, "{:d}"),
            Condition(
                "members whose successor the best head ranks first",
                succ["top_score"],
                ">=",
                0.5,
                "{:.0%}",
            ),
            Condition.requires("the best head is in the circuit of every family (≥ 2 families)", in_all),
        ],
        control=succ["chance"],
    )


def transfer_claim(
    circuits: dict[str, dict[str, Any]],
    cross: dict[str, Any],
    random: dict[str, Any],
    competent: list[str],
) -> Claim:
    claim = "One family's circuit works on another's prompts"
    paper = "number-word circuit: 87% on numeral prompts; an unrelated (IOI) circuit ≈ −7%"
    families = list(circuits)
    first = families[0]
    if len(families) < 2:
        return Claim.not_measured(claim, paper, f"the model continues only {first}")
    if "number_words" in families and "numerals" in families:
        i, j = families.index("number_words"), families.index("numerals")
        transfer, pair = cross["share"][i][j], "number-word circuit on numeral prompts"
    else:
        transfer, pair = cross["share"][1][0], f"{families[1]} circuit on {first} prompts"
    return Claim.of(
        claim,
        paper,
        f"{pair}: {transfer:.0%}; random circuits of the {first} circuit's size: "
        f"{random['mean']:.0%} on average over {len(random['shares'])}",
        [
            Condition(_COMPETENT, len(competent), ">=", 2, "{:d}"),
            Condition("share kept across families", transfer, ">=", 0.7, "{:.0%}"),
            Condition(
                "its lead over same-size random circuits", transfer - random["mean"], ">=", 0.4, "{:.0%}"
            ),
        ],
        control=random["mean"],
    )


STUDY = Study(
    name="seqcont",
    title="Interpreting Shared Circuits for Ordered Sequence Prediction — reproduction",
    summary="Lan & Barez 2023: which circuits continue 1 2 3, one two three, January February",
    presets=STUDY_PRESETS,
    configure=lambda preset, inputs: study_config(preset, inputs.model),
    measure=measure,
    claims=check_claims,
    sections=sections,
    takes_model=True,
)


__all__ = ["FAMILIES", "STUDY", "STUDY_PRESETS", "study_config"]
