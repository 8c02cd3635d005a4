"""Study ``inversion``: reproduce InversionView (Huang, Panwar, Goyal and Hahn, NeurIPS 2024) on
two probed models.

Background:
    What does an activation encode? InversionView answers with the inputs that give (almost) the
    same activation: its ε-preimage, sampled by a decoder trained to write inputs from activations
    and checked by re-running every sample through the probed model. The paper reads a
    character-counting model (2 layers, 1 head) and a 3-digit addition model (2 layers, 4 heads)
    this way, then confirms what it read with activation patching.

    Here both probed models and both decoders are trained on a CPU (reused when trained before),
    then:

    * every trained site is inverted at the paper's positions (counting: the query letter and ``:``;
      addition: ``=`` and each answer digit) on evaluation queries (held-out combinations for
      counting), with the share of samples inside ε against its control (random task inputs inside ε
      of the same query);
    * hypothesis scores (feature consistency) for the task's features at each site;
    * the paper's causal findings with the patching engine, each beside a same-answer control;
    * completeness on 3-digit addition by enumerating all 810,000 questions.

Usage:
    tinylens study inversion --preset quick
    run = run_study("inversion", Workspace("runs"), "quick")

References:
    Huang, Panwar, Goyal and Hahn, NeurIPS 2024 (arXiv:2405.17653); Luo et al. 2025
    (InverseScope, the feature consistency rate).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from tinylens.analysis.inversion import EPSILON
from tinylens.config import RunConfig, derive_seed, make_run_config
from tinylens.decoder_runs import (
    DecoderRunConfig,
    DecoderTrainConfig,
    decoder_run_config,
    load_decoder,
    train_decoder,
)
from tinylens.errors import Interrupted, unknown_name
from tinylens.evaluation import evaluate
from tinylens.runs import TrainedModel
from tinylens.studies import inversion_analyses as an
from tinylens.studies import inversion_figures as figs
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.framework import Study, StudyContext, StudyInputs
from tinylens.studies.report import Section

STUDY_PRESETS = ("quick", "paper", "tiny")

MIN_INSIDE = 0.6
"""The paper shows 60–80% of its samples inside ε at the sites it reads."""
CARRIES = 0.8
"""A patch "carries the effect" when it removes at least this share of the clean − corrupted
logit difference (the paper's patches remove 97–100%)."""
CONSISTENT = 0.9
"""A site encodes a feature when at least this share of its in-ε samples agree on it."""

COUNTING_SITES = (
    "embed",
    "L0.head0",
    "L0.resid_mid",
    "L0.mlp_out",
    "L0.resid_post",
    "L1.head0",
    "L1.resid_mid",
    "L1.mlp_out",
    "L1.resid_post",
)
"""The paper's nine counting sites."""
ADDITION_SITES = (
    "embed",
    "L0.head0",
    "L0.head1",
    "L0.head2",
    "L0.head3",
    "L0.resid_mid",
    "L0.resid_post",
    "L1.head0",
    "L1.head1",
    "L1.head2",
    "L1.head3",
    "L1.resid_mid",
    "L1.resid_post",
)
"""The paper's thirteen addition sites (no mlp_out)."""


@dataclass(frozen=True)
class DecoderSpec:
    """Which sites and positions a decoder reads, its size and its training."""

    sites: tuple[str, ...]
    positions: tuple[int, ...] | None
    train: DecoderTrainConfig
    d_model: int = 128
    n_layers: int = 2
    n_cond_blocks: int = 6

    def for_model(self, probed: TrainedModel) -> DecoderRunConfig:
        return decoder_run_config(
            probed,
            sites=self.sites,
            positions=self.positions,
            train=self.train,
            d_model=self.d_model,
            n_layers=self.n_layers,
            n_cond_blocks=self.n_cond_blocks,
        )


@dataclass(frozen=True)
class InversionStudyConfig:
    preset: str
    counting: RunConfig
    addition: RunConfig
    counting_decoder: DecoderSpec
    addition_decoder: DecoderSpec
    n_queries: int = 16
    """Held-out queries inverted per site and position."""
    per_setting: int = 16
    """Samples per (temperature, noise) setting and query (4 settings)."""
    n_reference: int = 512
    """Random task inputs for the controls."""
    n_pairs: int = 256
    """Clean/corrupted pairs per causal check."""
    completeness_sites: tuple[str, ...] = ("L0.head0", "L0.resid_post", "L1.resid_post")
    completeness_queries: int = 2
    completeness_per_setting: int = 64
    epsilon: float = EPSILON
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def study_config(preset: str, inputs: StudyInputs | None = None) -> InversionStudyConfig:
    """``quick``: both probed models and their decoders on a CPU within the hour. ``paper``: the
    decoders trained ten times longer and wider (GPU-sized). ``tiny``: a smoke run whose claims
    mean nothing."""
    if preset not in STUDY_PRESETS:
        raise unknown_name("inversion study preset", preset, STUDY_PRESETS)
    if preset == "tiny":
        small = {"steps": 40, "eval_every": 20, "eval_size": 64, "save_every": 20}
        counting = make_run_config("counting", "inversion", overrides={"train": small})
        addition = make_run_config("addition", "inversion", overrides={"train": small})
        train = DecoderTrainConfig(
            steps=8,
            batch_size=32,
            eval_every=8,
            eval_queries=2,
            eval_per_setting=2,
            save_every=4,
            warmup_steps=2,
        )
        tiny = {"train": train, "d_model": 32, "n_layers": 1, "n_cond_blocks": 1}
        return InversionStudyConfig(
            preset,
            counting,
            addition,
            DecoderSpec(("L0.head0", "L1.resid_post"), (-3, -2), **tiny),
            DecoderSpec(("L0.head0", "L0.resid_post", "L1.resid_post"), None, **tiny),
            n_queries=2,
            per_setting=2,
            n_reference=32,
            n_pairs=16,
            completeness_sites=("L0.resid_post",),
            completeness_queries=1,
            completeness_per_setting=4,
        )
    counting = make_run_config("counting", "inversion")
    addition = make_run_config("addition", "inversion")
    if preset == "quick":
        train = DecoderTrainConfig(steps=8000, batch_size=64, eval_every=2000)
        return InversionStudyConfig(
            preset,
            counting,
            addition,
            DecoderSpec(COUNTING_SITES, (-3, -2), train),
            DecoderSpec(ADDITION_SITES, None, train),
        )
    train = DecoderTrainConfig(steps=30_000, eval_every=5000)
    return InversionStudyConfig(
        preset,
        counting,
        addition,
        DecoderSpec(COUNTING_SITES, (-3, -2), train, d_model=256),
        DecoderSpec(ADDITION_SITES, None, train, d_model=256),
        n_queries=64,
        per_setting=64,
        completeness_queries=8,
        completeness_per_setting=256,
    )


@dataclass(frozen=True)
class InversionResult:
    """Per probed model: its accuracy, its decoder, the readings, viewer, patching and (addition)
    completeness, as JSON-ready dicts."""

    config: InversionStudyConfig
    counting: dict[str, Any]
    addition: dict[str, Any]
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"counting": self.counting, "addition": self.addition, "settings": self.settings}

    def meta(self) -> list[str]:
        c, a = self.counting, self.addition
        return [
            f"counting model {c['run']} ({c['accuracy']:.2%} on held-out combinations), decoder "
            f"{c['decoder']} ({c['decoder_steps']} steps); addition model {a['run']} "
            f"({a['accuracy']:.2%} exact match), decoder {a['decoder']} ({a['decoder_steps']} steps)",
            f"{self.config.n_queries} evaluation queries per site and position (held-out "
            "combinations for counting; fresh random questions for addition, which has no split), "
            f"{4 * self.config.per_setting} samples each; ε = {self.config.epsilon:g}",
        ]


def _trained_decoder(ctx: StudyContext, probed: TrainedModel, spec: DecoderSpec, what: str):
    cfg = spec.for_model(probed)
    result = train_decoder(ctx.workspace, probed, cfg, progress=ctx.progress)
    if result.status == "interrupted":
        raise Interrupted(
            f"training of the {what} decoder stopped at step {result.step}; run the study again "
            "to continue it"
        )
    return load_decoder(ctx.workspace, probed, result.run)


def _model_part(
    ctx: StudyContext,
    cfg: InversionStudyConfig,
    run_cfg: RunConfig,
    spec: DecoderSpec,
    what: str,
) -> tuple[TrainedModel, Any, dict[str, Any]]:
    probed = ctx.trained(run_cfg, f"{what} model")
    decoder = _trained_decoder(ctx, probed, spec, what)
    task = probed.task
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, f"inversion-{what}-queries"))
    accuracy = evaluate(probed.model, task, task.sample(2000, g, train=False)).exact
    queries = task.sample(cfg.n_queries, g, train=False)
    reference = task.sample(cfg.n_reference, g, train=False)
    positions = an.counting_positions(task) if what == "counting" else an.addition_positions(task)
    features = an.counting_features(task) if what == "counting" else an.addition_features(task)
    readings, viewer = an.read_sites(
        probed,
        decoder,
        positions,
        features,
        queries,
        reference,
        per_setting=cfg.per_setting,
        epsilon=cfg.epsilon,
        seed=derive_seed(cfg.seed, what),
    )
    summary = decoder.run.read_result("decoder_summary")
    part = {
        "run": probed.run.name,
        "accuracy": accuracy,
        "decoder": decoder.run.name,
        "decoder_steps": decoder.step,
        "decoder_training_s": summary["elapsed_s"],
        "sites": list(decoder.config.sites),
        "readings": [asdict(r) for r in readings],
        "viewer": [asdict(v) for v in viewer],
    }
    return probed, decoder, part


def measure(ctx: StudyContext, cfg: InversionStudyConfig) -> InversionResult:
    probed, _, counting = _model_part(ctx, cfg, cfg.counting, cfg.counting_decoder, "counting")
    maps, checks = an.counting_patching(probed, cfg.n_pairs, derive_seed(cfg.seed, "patch-counting"))
    counting["patching"] = {"maps": [asdict(m) for m in maps], "checks": [c.to_dict() for c in checks]}
    probed, decoder, addition = _model_part(ctx, cfg, cfg.addition, cfg.addition_decoder, "addition")
    maps, checks = an.addition_patching(
        probed, cfg.n_pairs, derive_seed(cfg.seed, "patch-addition"), CARRIES
    )
    addition["patching"] = {"maps": [asdict(m) for m in maps], "checks": [c.to_dict() for c in checks]}
    sites = [s for s in cfg.completeness_sites if s in decoder.config.sites]
    points = an.addition_completeness(
        probed,
        decoder,
        sites,
        cfg.completeness_queries,
        cfg.completeness_per_setting,
        cfg.epsilon,
        derive_seed(cfg.seed, "completeness"),
    )
    addition["completeness"] = [asdict(p) for p in points]
    settings = {
        "epsilon": cfg.epsilon,
        "min_inside": MIN_INSIDE,
        "carries": CARRIES,
        "consistent": CONSISTENT,
    }
    return InversionResult(cfg, counting, addition, settings)


# -- claims --------------------------------------------------------------------------------------


MARGIN = 0.2
"""How far above its control (random inputs) a share inside ε or a feature consistency must be,
and the most a same-answer control patch may remove, for a claim to hold."""


def _finite(values: list[float]) -> list[float]:
    return [v for v in values if not math.isnan(v)]


def _inside_claim(part: dict[str, Any], what: str) -> Claim:
    # the embedding is left out: its preimage is only "this token at this position"
    readings = [
        r for r in part["readings"] if r["site"] != "embed" and not math.isnan(r["share_inside"])
    ]
    shares = [r["share_inside"] for r in readings]
    bases = _finite([r["base_rate"] for r in readings])
    mean = sum(shares) / len(shares) if shares else math.nan
    base = sum(bases) / len(bases) if bases else math.nan
    worst = min(readings, key=lambda r: r["share_inside"]) if readings else None
    detail = (
        f"; lowest {worst['site']} at {worst['position']} {worst['share_inside']:.0%}" if worst else ""
    )
    return Claim.of(
        f"The decoder's samples for the {what} model land inside the ε-preimage",
        "the paper's viewer shows 100 of 1,024 samples, picked so that 60–80% are inside ε; "
        "here every sample written counts",
        f"{mean:.0%} inside ε on average over {len(readings)} site × position readings "
        f"(random inputs: {base:.1%}){detail}",
        [
            Condition("mean share inside ε", mean, ">=", MIN_INSIDE, "{:.0%}"),
            Condition("its margin over random inputs", mean - base, ">=", MARGIN, "{:.0%}"),
        ],
        control=base,
        note="every site but the embedding, the paper's four sampling settings; evaluation "
        "queries (held-out combinations for counting; addition has no split); control: random "
        "task inputs inside ε of the same queries",
    )


def _patch_claim(claim: str, expected: str, check: dict[str, Any]) -> Claim:
    heads = ", ".join(f"L{layer}.head{h}" for layer, h in check["heads"])
    return Claim.of(
        claim,
        expected,
        f"patching {heads} at {check['position']} removes {check['share']:.0%} of the logit "
        f"difference (clean {check['clean']:.2f}, corrupted {check['corrupt']:.2f}, patched "
        f"{check['patched']:.2f}); from a same-answer input: {check['control_share']:.0%}",
        [
            Condition("share removed", check["share"], ">=", CARRIES, "{:.0%}"),
            Condition(
                "share removed from a same-answer input", check["control_share"], "<=", MARGIN, "{:.0%}"
            ),
        ],
        control=check["control_share"],
        note="control: the same patch from an input with the clean answer",
    )


def _hypothesis_claim(part: dict[str, Any], site: str, position: str, feature: str, what: str) -> Claim:
    reading = next(
        (r for r in part["readings"] if r["site"] == site and r["position"] == position), None
    )
    claim = f"{what}: {site} at {position} encodes {feature}"
    if reading is None:
        return Claim.not_measured(claim, "", f"the decoder was not trained on {site} at {position}")
    consistency, base = reading["hypotheses"][feature]
    agree = (
        "no sample was inside ε"
        if math.isnan(consistency)
        else f"{consistency:.0%} of in-ε samples agree"
    )
    return Claim.of(
        claim,
        "its in-ε samples agree with the query on it",
        f"{agree} (random inputs: {base:.0%})",
        [
            Condition("feature consistency", consistency, ">=", CONSISTENT, "{:.0%}"),
            Condition("its margin over random inputs", consistency - base, ">=", MARGIN, "{:.0%}"),
        ],
        control=base,
        note="hypothesis score over the evaluation queries; control: random inputs that agree",
    )


def check_claims(result: InversionResult) -> list[Claim]:
    c, a = result.counting, result.addition
    c_checks = {k["what"]: k for k in c["patching"]["checks"]}
    a_checks = a["patching"]["checks"]
    carry = next(k for k in a_checks if "carry" in k["what"])
    hundreds = next(k for k in a_checks if "hundreds" in k["what"])
    carry_head = "L{}.head{}".format(*carry["heads"][0])
    return [
        _inside_claim(c, "counting"),
        _inside_claim(a, "addition"),
        _patch_claim(
            "Counting: one layer-0 head at the query letter carries the count",
            "patching head 0.0 at the query letter: 22.12 → 0.05",
            c_checks["layer-0 head at the query letter"],
        ),
        _patch_claim(
            "Counting: one layer-1 head at ':' carries the count",
            "patching head 1.0 at ':': 22.12 → −15.82 (the prediction flips)",
            c_checks["layer-1 head at the :"],
        ),
        _patch_claim(
            "Addition: layer-0 heads at '=' carry the hundreds digits",
            "heads 0.0, 0.1, 0.2 carry 24.6 of 25.3",
            hundreds,
        ),
        _patch_claim(
            "Addition: one head carries the carry into the hundreds", "head 0.3: 13.25 of 13.47", carry
        ),
        _hypothesis_claim(c, "L0.head0", "query letter", "query letter's count", "Counting"),
        _hypothesis_claim(a, carry_head, "=", "carry into the hundreds", "Addition"),
    ]


def sections(result: InversionResult) -> list[Section]:
    return figs.sections(result.to_json())


STUDY: Study[InversionStudyConfig, InversionResult] = Study(
    name="inversion",
    title="InversionView: what do the activations of a counting and an addition model encode?",
    summary=(
        "Huang, Panwar, Goyal and Hahn (NeurIPS 2024): decode activations into the inputs that "
        "share them"
    ),
    presets=STUDY_PRESETS,
    configure=study_config,
    measure=measure,
    claims=check_claims,
    sections=sections,
)
