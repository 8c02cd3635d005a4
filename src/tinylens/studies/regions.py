"""Study ``regions``: reproduce Janiak et al., "Characterizing stable regions in the residual
stream of LLMs" (2024).

Background:
    Patch points on the line between two prompts' residual activations (after block 0, last
    position) into the first prompt's run: the output does not move linearly but stays put inside
    "stable regions" and jumps at their boundaries. The paper finds such regions in trained
    language models and none in randomly initialised ones; boundaries sharpen with training and
    with size; dissimilar prompts sit in different regions; and a region spans many ReLU polytopes.

    Here the measurement runs on our own family of models of one task (sequence continuation,
    four layers, four widths), at every log-spaced checkpoint of their training, with each model's
    own initialisation as the random-init control, and on prompt pairs labelled by the task's
    answers: same-answer pairs are the algorithmic, ground-truth version of the paper's similar
    prompts. With ``--model`` and ``--prompts`` the same analyses run on a local GPT-2 style
    checkpoint and a text file of prompts, its random-init copy as the control.

Usage:
    tinylens study regions --preset quick
    tinylens study regions --model ./gpt2 --prompts prompts.txt
    run = run_study("regions", Workspace("runs"), "quick")

References:
    Janiak et al. 2024, arXiv:2409.17113 (code: reometry); Lee & Heimersheim on random-direction
    baselines; Shinkle 2025 on plateaus and depth.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from tinylens import runs
from tinylens.config import RunConfig, derive_seed, make_run_config, parameter_count
from tinylens.errors import ConfigError, unknown_name
from tinylens.model import check_pretrained_folder, load_pretrained, load_pretrained_tokenizer
from tinylens.studies import regions_analyses as an
from tinylens.studies import regions_figures as figs
from tinylens.studies.claims import Claim, Condition
from tinylens.studies.framework import Study, StudyContext, StudyInputs
from tinylens.studies.regions_analyses import BOUNDARY, SAME_REGION, ModelRegions, Sharpness
from tinylens.studies.report import Section
from tinylens.tasks.seqcont import SeqcontTask

STUDY_PRESETS = ("quick", "paper", "tiny")

QUICK_WIDTHS = (16, 32, 64, 128)
"""d_model of the quick family: 4 layers, 4 heads, d_mlp = 4 · d_model, 3,000 steps each. Four
layers, not two: with one block after the write site, outputs barely bend (plateaus need depth,
Shinkle 2025; measured here, a 2-layer family at d_model 32–256 had KL medians of 3.1–3.5 and
almost no pair above 10)."""
QUICK_LAYERS = 4
PAPER_WIDTHS = (64, 128, 256, 512)
PAPER_LAYERS = 6
TINY_WIDTHS = (16, 32)


@dataclass(frozen=True)
class RegionsStudyConfig:
    """Which models (a trained family or a checkpoint) and how the regions are measured."""

    preset: str
    sizes: tuple[RunConfig, ...]
    """The model family, smallest first (empty when a checkpoint is given)."""
    checkpoint: str | None = None
    """A local Hugging Face checkpoint directory to study instead of the family."""
    prompts_file: str | None = None
    """With a checkpoint: the text file of prompts, one per line."""
    prompts_sha256: str | None = None
    """The prompt file's contents' hash: a changed file is a new study run."""
    n_pairs: int = 256
    """Consecutive prompt pairs drawn from the task (the paper used 100)."""
    steps: int = 31
    """α values per path. The paper's 11 cap a monotone curve's sharpness at exactly 10, its own
    boundary threshold; 31 (its fine plots' resolution) lets a jump score up to 30."""
    mode: str = "linear"
    write_hook: str = "blocks.0.hook_resid_post"
    slice_steps: int = 41
    """Grid points per axis of the 2-D slices."""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _family(widths: tuple[int, ...], n_layers: int, train: dict[str, Any]) -> tuple[RunConfig, ...]:
    return tuple(
        make_run_config(
            "seqcont",
            "cpu",
            overrides={
                "model": {
                    "n_layers": n_layers,
                    "d_model": d,
                    "n_heads": 4,
                    "d_head": d // 4,
                    "d_mlp": 4 * d,
                },
                "train": train,
            },
        )
        for d in widths
    )


def study_config(preset: str, inputs: StudyInputs | None = None) -> RegionsStudyConfig:
    """``quick``: four 4-layer widths of the sequence-continuation model, trained on a CPU in
    about 20 minutes. ``paper``: four 6-layer widths up to d_model 512 (GPU-sized), or with
    ``--model``/``--prompts`` a checkpoint and the paper's pair count. ``tiny``: a smoke run whose
    claims mean nothing."""
    inputs = StudyInputs() if inputs is None else inputs
    if preset not in STUDY_PRESETS:
        raise unknown_name("regions study preset", preset, STUDY_PRESETS)
    small = {"n_pairs": 24, "steps": 11, "slice_steps": 7} if preset == "tiny" else {}
    if inputs.family is not None:
        return _family_config(preset, inputs, small)
    if inputs.model is not None or inputs.prompts is not None:
        return _checkpoint_config(preset, inputs, small)
    if preset == "tiny":
        train = {"steps": 60, "eval_every": 30, "eval_size": 64, "save_every": 30, "n_checkpoints": 4}
        return RegionsStudyConfig(preset, _family(TINY_WIDTHS, 2, train), **small)
    if preset == "quick":
        return RegionsStudyConfig(preset, _family(QUICK_WIDTHS, QUICK_LAYERS, {}))
    train = {"steps": 10_000, "lr": 1e-3, "warmup_steps": 300}
    return RegionsStudyConfig(preset, _family(PAPER_WIDTHS, PAPER_LAYERS, train))


def _family_config(preset: str, inputs: StudyInputs, small: dict[str, Any]) -> RegionsStudyConfig:
    """A sweep's trials as the family, smallest model first (the study trains or reuses them)."""
    family = inputs.family or ()
    if inputs.model is not None or inputs.prompts is not None:
        raise ConfigError("give --sweep (a family of our models) or --model/--prompts, not both")
    tasks = {(c.task, json.dumps(c.task_options, sort_keys=True)) for c in family}
    if not family or tasks != {("seqcont", json.dumps(family[0].task_options, sort_keys=True))}:
        raise ConfigError(
            "the regions study measures models of one sequence-continuation task: the sweep must "
            'have task = "seqcont" and the same [base.task] options for every trial '
            f"(it has {len(family)} trials of {sorted({c.task for c in family}) or 'none'})"
        )
    ordered = sorted(family, key=lambda c: (parameter_count(c.model), c.model.d_model, c.seed))
    return RegionsStudyConfig(preset, tuple(ordered), **small)


def _checkpoint_config(preset: str, inputs: StudyInputs, small: dict[str, Any]) -> RegionsStudyConfig:
    if inputs.model is None:
        raise ConfigError(
            "--prompts gives the prompts for a --model checkpoint; add --model DIR (without "
            "either, the study draws its prompts from its own task)"
        )
    if inputs.prompts is None:
        raise ConfigError(
            "the regions study needs prompts for a checkpoint: add --prompts FILE, a text file "
            "with one prompt per line (all of one length in the model's tokens)"
        )
    folder = check_pretrained_folder(inputs.model)
    texts = read_prompts(inputs.prompts)
    tokens = tokenize_prompts(folder, texts, inputs.prompts)
    digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()
    return RegionsStudyConfig(
        preset,
        (),
        checkpoint=str(folder.resolve()),
        prompts_file=str(Path(inputs.prompts).resolve()),
        prompts_sha256=digest,
        **{**small, "n_pairs": len(tokens) - 1},
    )


MAX_PROMPT_CHARS = 8_192
"""Longest prompt line read (GPT-2's 1,024-token context is about 5,000 characters of text)."""
MAX_PROMPT_FILE_CHARS = 16 * 2**20
"""Most characters of prompts read from one file: 10,000 of the paper's 10-token windows are
about 0.5 M; past this the file is refused while it is read, so memory stays bounded."""


def read_prompts(path: Path) -> list[str]:
    """The lines of a prompt file, stripped, read one line at a time (at least 3: pairs need 2,
    the 2-D slice 3).

    Consecutive lines are the pairs, so a blank line between prompts (which would shift every
    pair after it) is refused; blank lines at the end of the file are allowed.

    Raises:
        ConfigError: a missing, unreadable or non-UTF-8 file, a blank line before a prompt, a line
            over :data:`MAX_PROMPT_CHARS` characters, a file over :data:`MAX_PROMPT_FILE_CHARS`,
            or fewer than 3 prompts.
    """
    lines: list[str] = []
    total = 0
    blank: int | None = None  # the first blank line not yet followed by a prompt
    number = 0
    try:
        with Path(path).open(encoding="utf-8") as file:
            while raw := file.readline(MAX_PROMPT_CHARS + 1):  # never more than one bounded line
                number += 1
                text = raw.rstrip("\n")
                if len(text) > MAX_PROMPT_CHARS:
                    raise ConfigError(
                        f"prompt file {path}: line {number} is longer than {MAX_PROMPT_CHARS:,} "
                        "characters; a prompt is one line of text (cut it to the model's context)"
                    )
                prompt = text.strip()
                if not prompt:
                    blank = number if blank is None else blank
                    continue
                if blank is not None:
                    raise ConfigError(
                        f"prompt file {path}: line {blank} is blank; consecutive lines are the "
                        "pairs (A, B), so a blank line would shift every pair after it: remove it"
                    )
                total += len(prompt)
                if total > MAX_PROMPT_FILE_CHARS:
                    raise ConfigError(
                        f"prompt file {path} holds more than {MAX_PROMPT_FILE_CHARS:,} characters "
                        f"of prompts (at line {number}); split it, or keep the first lines"
                    )
                lines.append(prompt)
    except FileNotFoundError:
        raise ConfigError(f"prompt file {path} does not exist") from None
    except UnicodeDecodeError as err:
        raise ConfigError(
            f"prompt file {path} is not UTF-8 text (after line {number}): {err.reason}"
        ) from None
    except OSError as err:
        raise ConfigError(f"cannot read prompt file {path}: {err}") from None
    if len(lines) < 3:
        raise ConfigError(
            f"prompt file {path} has {len(lines)} prompt{'s' if len(lines) != 1 else ''}; "
            "the regions study needs at least 3 (one per line): pairs of consecutive prompts "
            "and a plane through three"
        )
    return lines


def tokenize_prompts(folder: Path, texts: list[str], path: Path) -> torch.Tensor:
    """``[prompt, pos]`` token ids by the checkpoint's tokenizer (no BOS, as in the paper).

    Raises:
        ConfigError: prompts of different token lengths (interpolation patches the last position
            of one prompt with another's, so the study needs equal lengths), or an empty one.
    """
    tokenizer = load_pretrained_tokenizer(folder)
    ids = [list(tokenizer(text, add_special_tokens=False)["input_ids"]) for text in texts]
    lengths = [len(i) for i in ids]
    if min(lengths) == 0:
        raise ConfigError(f"prompt file {path}: line {lengths.index(0) + 1} has no tokens")
    if len(set(lengths)) > 1:
        first = lengths[0]
        other = next(i for i, n in enumerate(lengths) if n != first)
        raise ConfigError(
            f"prompt file {path}: prompt 1 has {first} tokens but prompt {other + 1} has "
            f"{lengths[other]}; the regions study pairs prompts position by position, so every "
            f"prompt needs the same number of tokens (the paper used 10-token windows of text: "
            f"cut each line to {min(lengths)} tokens)"
        )
    return torch.tensor(ids, dtype=torch.int64)


# -- results --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """Sharpness of the consecutive pairs at one training step."""

    step: int
    sharpness: dict[str, Sharpness]
    """Metric (``l2``, ``kl``) → sharpness."""

    def of(self, metric: str = "l2") -> Sharpness:
        return self.sharpness[metric]


@dataclass(frozen=True)
class SizeRegions:
    """One model of the family (or the checkpoint): its regions trained and at initialisation."""

    name: str
    d_model: int
    n_params: int
    trained: ModelRegions
    init: ModelRegions
    """The same model at its random initialisation (step 0), or the checkpoint's random-init copy."""
    training: tuple[Checkpoint, ...]
    """Every saved checkpoint, step 0 first (empty for a checkpoint)."""
    slice: an.Slice | None
    run: str | None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "run": self.run,
            "d_model": self.d_model,
            "n_params": self.n_params,
            "trained": self.trained.to_json(),
            "init": self.init.to_json(),
            "training": [
                {"step": c.step, **{m: v.to_json() for m, v in c.sharpness.items()}}
                for c in self.training
            ],
            "slice": None if self.slice is None else self.slice.to_json(),
        }


@dataclass(frozen=True)
class RegionsResult:
    """Every measurement of the regions study."""

    config: RegionsStudyConfig
    source: str
    sizes: tuple[SizeRegions, ...]
    """Smallest first; the claims read the largest."""
    pair_counts: dict[str, int]
    labels: str
    examples: tuple[str, ...]
    own_models: bool
    """True for our trained family (with ground-truth labels), False for a checkpoint."""

    @property
    def largest(self) -> SizeRegions:
        return self.sizes[-1]

    def to_json(self) -> dict[str, Any]:
        return {
            "sizes": [s.to_json() for s in self.sizes],
            "pairs": {
                "counts": self.pair_counts,
                "labels": self.labels,
                "examples": list(self.examples),
            },
        }

    def meta(self) -> list[str]:
        cfg = self.config
        counts = ", ".join(f"{n} {k}" for k, n in self.pair_counts.items())
        return [
            f"models: {self.source}",
            f"pairs: {counts}; labelled {self.labels}",
            f"write site {cfg.write_hook}, last position; read: the final residual after the final "
            f"norm; {cfg.mode} paths of {cfg.steps} α steps; same region < {SAME_REGION}, "
            f"boundary > {BOUNDARY:g}",
            "example pairs: " + " || ".join(self.examples),
        ]


# -- measuring ------------------------------------------------------------------------------------


def measure(ctx: StudyContext, cfg: RegionsStudyConfig) -> RegionsResult:
    """Train (or reuse) the family, or open the checkpoint, and measure every model."""
    if cfg.checkpoint is not None:
        return _measure_checkpoint(cfg)
    task = SeqcontTask(**cfg.sizes[0].task_options)
    pairs = an.task_pairs(task, cfg.n_pairs, derive_seed(cfg.seed, "regions-pairs"))
    kw = {"steps": cfg.steps, "mode": cfg.mode, "write_hook": cfg.write_hook}
    sizes = []
    widths = [c.model.d_model for c in cfg.sizes]
    for run_cfg in cfg.sizes:
        m = run_cfg.model
        shared = widths.count(m.d_model) > 1  # a sweep may hold several seeds or depths of a width
        name = f"d_model {m.d_model}" + (f", {m.n_layers} layers, seed {run_cfg.seed}" if shared else "")
        trained = ctx.trained(run_cfg, f"d_model {m.d_model} model")
        run = trained.run
        seed = derive_seed(cfg.seed, "regions-baseline")
        # the model at its initialisation (step 0) is the random-init control
        init_model = runs.load_trained(ctx.workspace, run.name, 0).model
        trained_regions = an.measure_model(trained.model, pairs, seed=seed, **kw)
        init_regions = an.measure_model(init_model, pairs, seed=seed, **kw)
        measured = {0: init_regions, trained.step: trained_regions}
        training = []
        for step in run.checkpoint_steps():
            if step in measured:  # already measured in full: reuse its consecutive pairs
                sharpness = {metric: measured[step].of("all", metric) for metric in an.METRICS}
            else:
                model = runs.load_trained(ctx.workspace, run.name, step).model
                sharpness = an.sharpness_of(model, pairs, **kw)
            training.append(Checkpoint(step, sharpness))
        sizes.append(
            SizeRegions(
                name=name,
                d_model=m.d_model,
                n_params=parameter_count(m),
                trained=trained_regions,
                init=init_regions,
                training=tuple(training),
                slice=an.slice_of(
                    trained.model, pairs, steps=cfg.slice_steps, write_hook=cfg.write_hook
                ),
                run=run.name,
            )
        )
    layers = "/".join(str(n) for n in sorted({r.model.n_layers for r in cfg.sizes}))
    steps = "/".join(f"{n:,}" for n in sorted({r.train.steps for r in cfg.sizes}))
    return RegionsResult(
        config=cfg,
        source=f"{len(cfg.sizes)} models (d_model {', '.join(str(r.model.d_model) for r in cfg.sizes)}) "
        f"of a {layers}-layer sequence-continuation model, {steps} steps each, "
        "at every log-spaced checkpoint; control: each model at its initialisation",
        sizes=tuple(sizes),
        pair_counts={k: len(v) for k, v in pairs.a.items()},
        labels=pairs.labels,
        examples=pairs.examples,
        own_models=True,
    )


def _measure_checkpoint(cfg: RegionsStudyConfig) -> RegionsResult:
    assert cfg.checkpoint is not None and cfg.prompts_file is not None
    folder = Path(cfg.checkpoint)
    texts = read_prompts(Path(cfg.prompts_file))
    if hashlib.sha256("\n".join(texts).encode()).hexdigest() != cfg.prompts_sha256:
        raise ConfigError(f"prompt file {cfg.prompts_file} changed while the study ran; run it again")
    tokens = tokenize_prompts(folder, texts, Path(cfg.prompts_file))
    model = load_pretrained(folder)
    control = load_pretrained(folder, random_init=True, seed=derive_seed(cfg.seed, "regions-init"))
    tokenizer = load_pretrained_tokenizer(folder)
    pairs = an.text_pairs(model, tokens, texts, lambda t: tokenizer.decode([t]))
    kw = {"steps": cfg.steps, "mode": cfg.mode, "write_hook": cfg.write_hook}
    seed = derive_seed(cfg.seed, "regions-baseline")
    n_params = sum(p.numel() for p in model.parameters())
    size = SizeRegions(
        name=folder.name,
        d_model=int(model.cfg.d_model),
        n_params=int(n_params),
        trained=an.measure_model(model, pairs, seed=seed, **kw),
        init=an.measure_model(control, pairs, seed=seed, **kw),
        training=(),
        slice=an.slice_of(model, pairs, steps=cfg.slice_steps, write_hook=cfg.write_hook),
        run=None,
    )
    return RegionsResult(
        config=cfg,
        source=f"checkpoint {cfg.checkpoint} ({int(model.cfg.n_layers)} layers, d_model "
        f"{int(model.cfg.d_model)}) on {len(texts)} prompts of {tokens.shape[1]} tokens from "
        f"{cfg.prompts_file}; control: the same architecture randomly initialised",
        sizes=(size,),
        pair_counts={k: len(v) for k, v in pairs.a.items()},
        labels=pairs.labels,
        examples=pairs.examples,
        own_models=False,
    )


def sections(result: RegionsResult) -> list[Section]:
    return figs.sections(result)


# -- claims ---------------------------------------------------------------------------------------

MIN_ACCURACY = 0.9
"""Our models must do the task before their regions say anything about a trained model."""
MIN_SHARE = 0.1
"""A "clear share" of pairs: at least this many below 1.2 and above 10 for regions to exist."""
MAX_INIT_BOUNDARY = 0.05
"""Random-init models "show none": at most this share of their pairs above 10."""
MIN_SHARPENING = 1.5
"""Trained median sharpness over the random-init one."""
MIN_TREND = 0.5
"""Spearman correlation of median sharpness with training step, and with size."""
MIN_GAP = 0.1
"""Different-answer pairs cross a boundary at least this much more often (share points)..."""
MIN_RATIO = 2.0
"""...and at least this many times as often as same-answer pairs."""
MIN_SAME_REGION_PAIRS = 5
"""Pairs below 1.2 needed to count their sign flips."""
MIN_FLIPS = 10
"""Median MLP sign flips of same-region pairs for "a region spans many polytopes"."""


def check_claims(result: RegionsResult) -> list[Claim]:
    """The paper's four claims on its metric (L2 of the final residual), and ours on the
    next-token distribution (KL); each rule is stated in its claim."""
    return [
        regions_exist_claim(result.largest, result.own_models),
        sharpening_claim(result.sizes, result.own_models),
        answers_claim(result.largest, result.own_models),
        polytopes_claim(result.largest, result.own_models),
        output_regions_claim(result.largest, result.own_models),
    ]


def _competent(size: SizeRegions, own: bool) -> list[Condition]:
    if not own:
        return []
    accuracy = size.trained.accuracy
    return [
        Condition(
            f"the {size.name} model's top-1 accuracy",
            math.nan if accuracy is None else accuracy,
            ">=",
            MIN_ACCURACY,
            "{:.0%}",
        )
    ]


def regions_exist_claim(size: SizeRegions, own: bool) -> Claim:
    s = size.trained.of("all")
    init = size.init.of("all")
    return Claim.of(
        "Stable regions exist",
        "trained models: many pairs with flat-then-jump curves (sharpness > 10), others linear",
        f"{size.name}: {s.share_same_region:.0%} of {s.n} pairs below {SAME_REGION}, "
        f"{s.share_boundary:.0%} above {BOUNDARY:g} (median {s.median:.2f}); random init: "
        f"{init.share_boundary:.0%} above {BOUNDARY:g}; {s.dropped} pairs dropped (d(1) ≈ 0)",
        [
            *_competent(size, own),
            Condition(
                f"share of pairs below {SAME_REGION}", s.share_same_region, ">=", MIN_SHARE, "{:.0%}"
            ),
            Condition(f"share above {BOUNDARY:g}", s.share_boundary, ">=", MIN_SHARE, "{:.0%}"),
        ],
        control=init.share_boundary,
    )


def sharpening_claim(sizes: tuple[SizeRegions, ...], own: bool) -> Claim:
    largest = sizes[-1]
    trained, init = largest.trained.of("all"), largest.init.of("all")
    ratio = trained.median / init.median if init.median > 0 else math.nan
    worst_init = max(s.init.of("all").share_boundary for s in sizes)
    conditions = [
        *_competent(largest, own),
        Condition(
            f"largest share above {BOUNDARY:g} at random init",
            worst_init,
            "<=",
            MAX_INIT_BOUNDARY,
            "{:.0%}",
        ),
        Condition("trained / random-init median sharpness", ratio, ">=", MIN_SHARPENING, "{:.2f}"),
    ]
    measured = (
        f"{largest.name}: median {trained.median:.2f} trained vs {init.median:.2f} at random init "
        f"(× {ratio:.2f}); at most {worst_init:.0%} of random-init pairs above {BOUNDARY:g}"
    )
    note = ""
    if largest.training:
        steps = [c.step for c in largest.training]
        medians = [c.of().median for c in largest.training]
        with_step = an.spearman(steps, medians)
        conditions.append(
            Condition(
                "Spearman ρ of median sharpness with training step", with_step, ">=", MIN_TREND, "{:.2f}"
            )
        )
        measured += f"; ρ with step {with_step:.2f}"
    else:
        note = "one checkpoint: growth with training and size not measurable"
    if len(sizes) >= 2:
        with_size = an.spearman([s.n_params for s in sizes], [s.trained.of("all").median for s in sizes])
        conditions.append(
            Condition(
                "Spearman ρ of median sharpness with model size", with_size, ">=", MIN_TREND, "{:.2f}"
            )
        )
        measured += f"; ρ with size {with_size:.2f} over {len(sizes)} sizes"
    return Claim.of(
        "Random init shows none; boundaries sharpen with training and size",
        "random-init models have no regions; sharpness grows over training tokens and parameters",
        measured,
        conditions,
        note=note,
        control=init.median,
    )


def answers_claim(size: SizeRegions, own: bool, metric: str = "l2") -> Claim:
    """Different-answer pairs cross a boundary far more often than same-answer pairs; a pair
    dropped because its output did not move counts as crossing nothing."""
    claim = "Different answers sit in different regions"
    paper = "dissimilar prompts cross boundaries, similar ones stay in one region"
    same, different = size.trained.of("same", metric), size.trained.of("different", metric)
    if same.n + same.dropped == 0 or different.n + different.dropped == 0:
        return Claim.not_measured(claim, paper, "no same-answer or no different-answer pairs")
    gap = different.crossing_rate - same.crossing_rate
    # With no same-answer pair crossing, the ratio is unbounded: it is taken against one pair in
    # n (the least rate n pairs can show), so 0% vs 0% fails and a real gap stays a finite number.
    ratio = different.crossing_rate / max(same.crossing_rate, 1 / (same.n + same.dropped))
    return Claim.of(
        claim,
        paper,
        f"{size.name}: {different.crossing_rate:.0%} of {different.n + different.dropped} "
        f"different-answer pairs above {BOUNDARY:g} vs {same.crossing_rate:.0%} of "
        f"{same.n + same.dropped} same-answer pairs (medians {different.median:.2f} vs "
        f"{same.median:.2f}; {same.dropped} same-answer pairs left the output unmoved)",
        [
            *_competent(size, own),
            Condition("pairs crossing, different − same answer", gap, ">=", MIN_GAP, "{:.0%}"),
            Condition(
                "different / same answer (same: at least 1 pair)", ratio, ">=", MIN_RATIO, "{:.2f}"
            ),
        ],
        control=same.crossing_rate,
    )


def output_regions_claim(size: SizeRegions, own: bool) -> Claim:
    """Ours, not the paper's: the same regions read in the next-token distribution (KL)."""
    trained, init = size.trained.of("all", "kl"), size.init.of("all", "kl")
    same, different = size.trained.of("same", "kl"), size.trained.of("different", "kl")
    return Claim.of(
        "Ours: the prediction itself has stable regions (KL)",
        "not in the paper, which read KL only for hand-picked pairs",
        f"{size.name}: {trained.crossing_rate:.0%} of pairs above {BOUNDARY:g} in normalised "
        f"KL(p_A ‖ p_α) (median {trained.median:.2f}) vs {init.crossing_rate:.0%} at random init; "
        f"different answer {different.crossing_rate:.0%}, same answer {same.crossing_rate:.0%}",
        [
            *_competent(size, own),
            Condition(
                f"share of pairs above {BOUNDARY:g} in KL",
                trained.crossing_rate,
                ">=",
                MIN_SHARE,
                "{:.0%}",
            ),
            Condition(
                "the same share at random init", init.crossing_rate, "<=", MAX_INIT_BOUNDARY, "{:.0%}"
            ),
            Condition(
                "different − same answer",
                different.crossing_rate - same.crossing_rate,
                ">=",
                MIN_GAP,
                "{:.0%}",
            ),
        ],
        control=init.crossing_rate,
    )


def polytopes_claim(size: SizeRegions, own: bool) -> Claim:
    inside = size.trained.flips_where(0.0, SAME_REGION)
    crossing = size.trained.flips_where(BOUNDARY, math.inf)
    median_inside = float(torch.tensor(inside, dtype=torch.float64).median()) if inside else math.nan
    median_crossing = (
        float(torch.tensor(crossing, dtype=torch.float64).median()) if crossing else math.nan
    )
    return Claim.of(
        "A region spans many polytopes",
        "pairs in one region still flip many MLP signs: regions are much larger than polytopes",
        f"{size.name}: {len(inside)} pairs in one region (sharpness < {SAME_REGION}) flip a median "
        f"{median_inside:.0f} of {size.trained.d_mlp} last-layer MLP signs; pairs across a boundary "
        f"flip {median_crossing:.0f}",
        [
            *_competent(size, own),
            Condition("pairs in one region", len(inside), ">=", MIN_SAME_REGION_PAIRS, "{:d}"),
            Condition("their median MLP sign flips", median_inside, ">=", MIN_FLIPS, "{:.0f}"),
        ],
        control=median_crossing,
    )


STUDY = Study(
    name="regions",
    title="Characterizing stable regions in the residual stream — reproduction",
    summary="Janiak et al. 2024: do activations sit in stable regions with sharp boundaries",
    presets=STUDY_PRESETS,
    configure=study_config,
    measure=measure,
    claims=check_claims,
    sections=sections,
    takes_model=True,
    takes_prompts=True,
    takes_family=True,
)


__all__ = ["STUDY", "STUDY_PRESETS", "study_config"]
