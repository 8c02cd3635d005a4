"""The regions study's measurements: prompt pairs, one model's regions, its 2-D slice.

Everything here takes a model and token tensors and returns typed, JSON-ready records; the study
module decides which models (sizes, checkpoints, random-init controls) and which claims.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from jaxtyping import Int

from tinylens.analysis import (
    HookedModel,
    RegionCurves,
    boundary_sharpness,
    interpolate,
    normalise,
    plane_slice,
    random_directions,
    residual_at,
    sign_flips,
)
from tinylens.errors import ConfigError
from tinylens.tasks.seqcont import SeqcontTask

SAME_REGION = 1.2
"""Sharpness below this reads as "the path stayed in one region" (the paper's threshold)."""
BOUNDARY = 10.0
"""Sharpness above this reads as "the path crossed a boundary" (the paper's threshold)."""
KINDS = ("all", "same", "different")
"""Pair sets: consecutive prompts (the paper's pairing), same-answer and different-answer pairs."""
METRICS = ("l2", "kl")
"""Output distances: the paper's L2 of the final residual after the final norm, and the KL
divergence KL(p_A ‖ p_α) of the next-token distributions (ours; the paper used it only for
hand-picked examples)."""
MIN_KL = 1e-3
"""Pairs whose KL at α = 1 is at most this (nats) are dropped from the KL curves: B's activation
leaves A's prediction as it was."""


@dataclass(frozen=True)
class PromptPairs:
    """Prompt pairs (A, B) of each kind, all of one length, and how they were labelled."""

    a: dict[str, Int[torch.Tensor, "pair pos"]]
    b: dict[str, Int[torch.Tensor, "pair pos"]]
    triple: Int[torch.Tensor, "3 pos"]
    """Three prompts with three different answers, for the 2-D slice."""
    triple_names: tuple[str, str, str]
    """What labels each of the three (their answers)."""
    labels: str
    """How "same" and "different" were decided, for the report."""
    examples: tuple[str, ...]
    """A few pairs as text, for the report."""
    answers: Int[torch.Tensor, " pair"] | None = None
    """The consecutive pairs' A prompts' true next tokens (None for free text)."""


def task_pairs(task: SeqcontTask, n: int, seed: int) -> PromptPairs:
    """Pairs drawn from the task, split by its own answers (ground truth).

    ``all``: prompts i and i + 1 of one stream (the paper's consecutive pairs); ``different``:
    those of them whose answers differ; ``same``: each A with a copy whose filler words are
    redrawn (:meth:`SeqcontTask.refill`), so the answer is the same and the words are not.
    """
    g = torch.Generator().manual_seed(seed)
    stream = task.sample(n + 2, g)
    prompt_len = task.seq_len - 1
    a, b = stream[:n], stream[1 : n + 1]
    differ = task.answer(a) != task.answer(b)
    same_b = task.refill(a, g)
    answers = task.answer(stream)
    triple_at = next(
        (i for i in range(n) if len({int(answers[i]), int(answers[i + 1]), int(answers[i + 2])}) == 3),
        None,
    )
    if triple_at is None:
        raise ConfigError(f"no three consecutive prompts of the {n} drawn have different answers")
    triple = stream[triple_at : triple_at + 3]
    vocab = task.vocab
    return PromptPairs(
        a={"all": a[:, :prompt_len], "same": a[:, :prompt_len], "different": a[differ, :prompt_len]},
        b={
            "all": b[:, :prompt_len],
            "same": same_b[:, :prompt_len],
            "different": b[differ, :prompt_len],
        },
        triple=triple[:, :prompt_len],
        triple_names=tuple(vocab[int(t)] for t in task.answer(triple)),  # type: ignore[arg-type]
        labels="by the task's answers (ground truth): same-answer pairs keep the sequence and "
        "redraw the filler words; different-answer pairs are consecutive prompts whose next "
        "member differs",
        examples=(
            f"A: {task.decode(a[0, :prompt_len])} | B: {task.decode(b[0, :prompt_len])}",
            f"same answer: {task.decode(a[0, :prompt_len])} | {task.decode(same_b[0, :prompt_len])}",
        ),
        answers=task.answer(a),
    )


def text_pairs(
    model: HookedModel, tokens: Int[torch.Tensor, "prompt pos"], texts: list[str], decode: Any
) -> PromptPairs:
    """Consecutive pairs of a user's prompts, split by the model's own next-token prediction
    (there is no ground truth in free text): "same" pairs the first later prompt predicted the
    same; "different" keeps the consecutive pairs predicted differently.

    Args:
        model: the model whose predictions label the pairs.
        tokens: the prompts, one per row, all of one length (at least 3 rows).
        texts: the prompts as given, for the report.
        decode: ``token id → text`` for labelling the slice's corners.
    """
    top = top_tokens(model, tokens)
    n = len(tokens) - 1
    a, b = tokens[:-1], tokens[1:]
    differ = top[:-1] != top[1:]
    partner = [next((j for j in range(i + 1, len(tokens)) if top[j] == top[i]), None) for i in range(n)]
    same_a = [i for i, j in enumerate(partner) if j is not None]
    same_b = [j for j in partner if j is not None]
    triple = next(
        (i for i in range(len(tokens) - 2) if len({int(top[i]), int(top[i + 1]), int(top[i + 2])}) == 3),
        0,
    )
    rows = tokens[triple : triple + 3]
    return PromptPairs(
        a={"all": a, "same": tokens[same_a], "different": a[differ]},
        b={"all": b, "same": tokens[same_b], "different": b[differ]},
        triple=rows,
        triple_names=tuple(decode(int(t)) for t in top[triple : triple + 3]),  # type: ignore[arg-type]
        labels="by the model's own top-1 next token (free text has no ground truth): same pairs "
        "join each prompt to the next one predicted the same, different pairs are consecutive "
        "prompts predicted differently",
        examples=(f"A: {texts[0]} | B: {texts[1]}",),
    )


def top_tokens(
    model: HookedModel, tokens: Int[torch.Tensor, "prompt pos"]
) -> Int[torch.Tensor, " prompt"]:
    """Each prompt's top next token, 64 prompts per pass (a large vocabulary's logits add up)."""
    with torch.no_grad():
        return torch.cat([model(chunk)[:, -1].argmax(-1) for chunk in tokens.split(64)])


@dataclass(frozen=True)
class Sharpness:
    """Boundary sharpness of one set of pairs."""

    values: list[float]
    """Each kept pair's sharpness."""
    dropped: int
    """Pairs whose d(1) was about 0 (left out, as in the paper)."""

    @property
    def n(self) -> int:
        return len(self.values)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.values, q)) if self.values else math.nan

    @property
    def median(self) -> float:
        return self.quantile(0.5)

    @property
    def share_same_region(self) -> float:
        """Share of kept pairs below :data:`SAME_REGION`."""
        return float(np.mean(np.array(self.values) < SAME_REGION)) if self.values else math.nan

    @property
    def share_boundary(self) -> float:
        """Share of kept pairs above :data:`BOUNDARY`."""
        return float(np.mean(np.array(self.values) > BOUNDARY)) if self.values else math.nan

    @property
    def crossing_rate(self) -> float:
        """Share of all pairs, dropped ones included, above :data:`BOUNDARY`: a dropped pair's
        output did not move, so it crossed nothing."""
        total = self.n + self.dropped
        return sum(v > BOUNDARY for v in self.values) / total if total else math.nan

    def to_json(self) -> dict[str, Any]:
        return {
            "median": self.median,
            "q25": self.quantile(0.25),
            "q75": self.quantile(0.75),
            "share_same_region": self.share_same_region,
            "share_boundary": self.share_boundary,
            "crossing_rate": self.crossing_rate,
            "dropped": self.dropped,
            "values": [round(v, 4) for v in self.values],
        }


@dataclass(frozen=True)
class Band:
    """Median and 25–75% band of normalised curves, per α."""

    median: list[float]
    q25: list[float]
    q75: list[float]

    @classmethod
    def of(cls, normalised: torch.Tensor, steps: int) -> Band:
        curves = normalised.double()
        if len(curves) == 0:
            nan = [math.nan] * steps
            return cls(nan, nan, nan)
        q = torch.quantile(curves, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
        return cls(*([round(float(v), 5) for v in row] for row in (q[1], q[0], q[2])))


@dataclass(frozen=True)
class ModelRegions:
    """One model's regions: sharpness per metric and pair set, curves, baseline and sign flips."""

    sharpness: dict[str, dict[str, Sharpness]]
    """Metric (:data:`METRICS`) → pair kind (:data:`KINDS`) → sharpness."""
    baseline: dict[str, Sharpness]
    """Metric → sharpness of A → A + a direction drawn from the activations' covariance."""
    curves: dict[str, Band]
    """Metric → the consecutive pairs' normalised curves."""
    flips: list[int]
    """Per consecutive pair: MLP units whose pre-activation sign differs between A's clean run and
    A's run with B's activation written (the last layer's MLP)."""
    pair_sharpness: list[float]
    """Per consecutive pair: its L2 sharpness, NaN where dropped (aligned with ``flips``)."""
    d_mlp: int
    accuracy: float | None
    """Top-1 accuracy on the A prompts where they have ground truth (None for free text)."""

    def of(self, kind: str = "all", metric: str = "l2") -> Sharpness:
        return self.sharpness[metric][kind]

    def flips_where(self, low: float, high: float) -> list[int]:
        """Sign flips of the pairs whose L2 sharpness is in ``[low, high)``."""
        return [f for f, s in zip(self.flips, self.pair_sharpness, strict=True) if low <= s < high]

    def to_json(self) -> dict[str, Any]:
        return {
            "sharpness": {
                m: {k: v.to_json() for k, v in by_kind.items()} for m, by_kind in self.sharpness.items()
            },
            "baseline": {m: v.to_json() for m, v in self.baseline.items()},
            "curves": {m: asdict(band) for m, band in self.curves.items()},
            "flips": self.flips,
            "d_mlp": self.d_mlp,
            "accuracy": self.accuracy,
        }


def metric_sharpness(curves: RegionCurves) -> dict[str, tuple[Sharpness, torch.Tensor]]:
    """Metric → (sharpness, normalised curves of the kept pairs) of one interpolation."""
    kept, kl_normalised = normalise(curves.kl, MIN_KL)
    return {
        "l2": (Sharpness([float(v) for v in curves.sharpness], curves.dropped), curves.normalised),
        "kl": (
            Sharpness([float(v) for v in boundary_sharpness(kl_normalised)], int((~kept).sum())),
            kl_normalised,
        ),
    }


def sharpness_of(
    model: HookedModel, pairs: PromptPairs, *, steps: int, mode: str, write_hook: str
) -> dict[str, Sharpness]:
    """Metric → sharpness of the consecutive pairs only (the cheap measurement along training)."""
    curves = interpolate(
        model, pairs.a["all"], pairs.b["all"], steps=steps, mode=mode, write_hook=write_hook
    )
    return {m: s for m, (s, _) in metric_sharpness(curves).items()}


def measure_model(
    model: HookedModel,
    pairs: PromptPairs,
    *,
    steps: int,
    mode: str,
    write_hook: str,
    seed: int,
) -> ModelRegions:
    """Every measurement of one model on the pairs.

    Args:
        model: the model.
        pairs: the prompt pairs.
        steps: α steps per path.
        mode: the path (``linear``, ``arc``, ``slerp``).
        write_hook: where the path is written (read at the final norm's output).
        seed: seeds the random-direction baseline.
    """
    kw = {"steps": steps, "mode": mode, "write_hook": write_hook}
    raw = {k: interpolate(model, pairs.a[k], pairs.b[k], **kw) for k in KINDS if len(pairs.a[k])}
    by_kind = {k: metric_sharpness(curves) for k, curves in raw.items()}
    a = pairs.a["all"]
    # the baseline done right: A → A + a direction drawn from the activations' covariance
    directions = random_directions(
        model, torch.cat([a, pairs.b["all"]]), len(a), hook=write_hook, seed=seed
    )
    act_a = residual_at(model, a, -1, [write_hook])[0].to(directions.dtype)
    everything = raw["all"]
    baseline = metric_sharpness(interpolate(model, a, targets=act_a + directions, **kw))
    flips = sign_flips(model, a, pairs.b["all"], write_hook=write_hook, steps=2)[:, -1]
    pair_sharpness = torch.full((len(a),), math.nan, dtype=torch.float64)
    pair_sharpness[everything.kept] = everything.sharpness.double()
    accuracy = None
    if pairs.answers is not None:
        accuracy = float((top_tokens(model, a) == pairs.answers).double().mean())
    return ModelRegions(
        sharpness={
            m: {k: by_kind[k][m][0] if k in by_kind else Sharpness([], 0) for k in KINDS}
            for m in METRICS
        },
        baseline={m: baseline[m][0] for m in METRICS},
        curves={m: Band.of(by_kind["all"][m][1], steps) for m in METRICS},
        flips=[int(f) for f in flips],
        pair_sharpness=[float(s) for s in pair_sharpness],
        d_mlp=int(model.cfg.d_mlp or 0),
        accuracy=accuracy,
    )


@dataclass(frozen=True)
class Slice:
    """A 2-D slice's picture: RGB per grid point and where A, B and C sit."""

    rgb: list[list[list[float]]]
    """``[β][α][channel]``, channel k = 1 − normalised distance to prompt k's output."""
    low: float
    high: float
    corners: list[list[float]]
    names: tuple[str, str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "rgb": self.rgb,
            "low": self.low,
            "high": self.high,
            "corners": self.corners,
            "names": list(self.names),
        }


def slice_of(model: HookedModel, pairs: PromptPairs, *, steps: int, write_hook: str) -> Slice | None:
    """The plane through the triple's activations (None when they span no plane)."""
    try:
        plane = plane_slice(model, pairs.triple, write_hook=write_hook, steps=steps)
    except ConfigError:  # two equal activations (a random-init model can map prompts alike)
        return None
    rgb = plane.rgb().double()
    return Slice(
        rgb=[[[round(float(c), 4) for c in px] for px in row] for row in rgb],
        low=float(plane.alphas[0]),
        high=float(plane.alphas[-1]),
        corners=[[round(float(v), 4) for v in c] for c in plane.corners],
        names=pairs.triple_names,
    )


def spearman(x: Sequence[float | int], y: Sequence[float | int]) -> float:
    """Spearman rank correlation (average ranks for ties); NaN with fewer than 3 points or a
    constant series."""
    if len(x) < 3 or len(x) != len(y):
        return math.nan

    def ranks(v: Sequence[float | int]) -> np.ndarray:
        arr = np.asarray(v, dtype=float)
        order = arr.argsort(kind="stable")
        r = np.empty(len(arr))
        r[order] = np.arange(len(arr), dtype=float)
        for value in np.unique(arr):  # ties share their mean rank
            tied = arr == value
            r[tied] = r[tied].mean()
        return r

    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return math.nan
    return float(np.corrcoef(rx, ry)[0, 1])
