"""The inversion study's measurements on one probed model and its decoder.

* :func:`read_sites` inverts evaluation queries at every trained site and named position: the share
  of samples inside ε (with its control, the share of random task inputs inside ε of the same
  query), the hypothesis scores of the task's features, and one query's samples for the viewer
  with per-token likelihood shifts.
* :func:`counting_patching` and :func:`addition_patching` check the paper's causal findings with
  the patching engine; each effect is the share of the clean − corrupted logit difference that
  the patch removes, beside its control: the same patch from an input with the same answer.
* :func:`addition_completeness` enumerates every 3-digit addition, so the true ε-preimage of a
  query is known: the decoder's recall of it and the precision of its samples.

Tasks know no models and the analyses know no files: this module joins them for the study.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from tinylens.analysis import (
    SETTINGS,
    InversionSamples,
    completeness,
    hypothesis_score,
    invert,
    likelihood_shift,
    logit_diff,
    parse_site,
    patch_heads,
    patch_sweep,
    preimage_distance,
    site_activations,
    token_log_likelihoods,
)
from tinylens.decoder_runs import TrainedDecoder, allowed_positions
from tinylens.runs import TrainedModel
from tinylens.tasks.addition import AdditionTask
from tinylens.tasks.counting import CountingTask

Feature = Callable[[torch.Tensor], torch.Tensor]
"""tokens ``[batch, pos]`` → values ``[batch]`` or ``[batch, k]``; any token sequence accepted."""

VIEWER_ROWS = 16
"""Samples shown per query in the viewer."""


# -- the features hypotheses are scored on -------------------------------------------------------


def counting_positions(task: CountingTask) -> dict[str, int]:
    return {"query letter": task.query_position, ":": task.query_position + 1}


def counting_features(task: CountingTask) -> dict[str, Feature]:
    """The query letter, and its count among the letters before ``|``."""
    q = task.query_position

    sep, ask = task.vocab.index("|"), task.vocab.index(":")
    first, last = task.vocab.index("a"), task.vocab.index("z")

    def query_count(tokens: torch.Tensor) -> torch.Tensor:
        body = tokens[:, : task.max_letters + 1]
        count = (body == tokens[:, q : q + 1]).sum(1)
        letter = (tokens[:, q] >= first) & (tokens[:, q] <= last)
        framed = letter & (tokens[:, q - 1] == sep) & (tokens[:, q + 1] == ask)
        return torch.where(framed, count, -1)  # −1: a malformed sample, never a query's value

    return {"query letter": lambda t: t[:, q], "query letter's count": query_count}


def addition_positions(task: AdditionTask) -> dict[str, int]:
    equals = 2 * task.n_digits + 1
    names = task.answer_names
    return {"=": equals, **{name: equals + 1 + i for i, name in enumerate(names)}}


def _operand_values(task: AdditionTask, tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The operands as integers (−1 where a digit slot holds another token) and a validity mask."""
    nd = task.n_digits
    a = tokens[:, :nd]
    b = tokens[:, nd + 1 : 2 * nd + 1]
    valid = (a < 10).all(1) & (b < 10).all(1)
    powers = 10 ** torch.arange(nd - 1, -1, -1)
    return (a * powers).sum(1), (b * powers).sum(1), valid


def addition_features(task: AdditionTask) -> dict[str, Feature]:
    """The hundreds digits, the tens digits, the carry into the hundreds column, and the first
    answer digit (the sum ≥ 1000), each −1 on an input whose operand slots are not all digits."""
    nd = task.n_digits

    def digits(column: int) -> Feature:  # column 0 = the most significant digit
        return lambda t: torch.stack([t[:, column], t[:, nd + 1 + column]], dim=1)

    def carry(tokens: torch.Tensor) -> torch.Tensor:
        a, b, valid = _operand_values(task, tokens)
        low = 10 ** (nd - 1)
        value = ((a % low + b % low) >= low).long()
        return torch.where(valid, value, -1)

    def first_digit(tokens: torch.Tensor) -> torch.Tensor:
        a, b, valid = _operand_values(task, tokens)
        return torch.where(valid, ((a + b) >= 10**nd).long(), -1)

    return {
        "hundreds digits": digits(0),
        "tens digits": digits(1),
        "carry into the hundreds": carry,
        "first answer digit": first_digit,
    }


# -- reading the sites ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SiteReading:
    """One site at one named position, over the evaluation queries."""

    site: str
    position: str
    share_inside: float
    """Mean over queries of the share of written samples inside ε (all four settings)."""
    by_setting: dict[str, float]
    """The same per (temperature, noise) setting."""
    base_rate: float
    """Control: mean share of random task inputs inside ε of the same queries."""
    n_queries: int
    hypotheses: dict[str, tuple[float, float]]
    """feature → (mean consistency over queries with samples inside ε, mean base rate)."""


@dataclass(frozen=True)
class ViewerEntry:
    """One query's samples at one site, as the paper's viewer shows them."""

    site: str
    position: str
    query: str
    rows: list[tuple[list[str], list[float], float, int]]
    """Per sample, nearest first: its tokens (as text), each token's likelihood shift (nats),
    its distance D and how often it was written."""


def read_sites(
    probed: TrainedModel,
    decoder: TrainedDecoder,
    positions: dict[str, int],
    features: dict[str, Feature],
    queries: torch.Tensor,
    reference: torch.Tensor,
    *,
    per_setting: int,
    epsilon: float,
    seed: int,
) -> tuple[list[SiteReading], list[ViewerEntry]]:
    """Invert every query at every trained site and every named position the decoder reads."""
    model, task, cfg = probed.model, probed.task, decoder.config
    allowed = allowed_positions(cfg, queries)[0]
    usable = {name: p for name, p in positions.items() if bool(allowed[p])}
    rng = torch.Generator().manual_seed(seed)
    readings, viewer = [], []
    for index, name in enumerate(cfg.sites):
        site = parse_site(name, model)
        acts = site_activations(model, queries, site).float()
        ref_acts = site_activations(model, reference, site).float()
        ref_mask = allowed_positions(cfg, reference)
        for label, pos in usable.items():
            shares, bases = [], []
            by_setting: dict[tuple[float, float], list[float]] = {st: [] for st in SETTINGS}
            scores: dict[str, list[tuple[float, float]]] = {f: [] for f in features}
            for i, query in enumerate(acts[:, pos]):
                if float(query.norm()) == 0.0:
                    continue
                per = [
                    invert(
                        model,
                        decoder.decoder,
                        query,
                        site,
                        index,
                        rng,
                        per_setting=per_setting,
                        settings=(setting,),
                        epsilon=epsilon,
                        allowed=lambda t: allowed_positions(cfg, t),
                    )
                    for setting in SETTINGS
                ]
                for setting, one in zip(SETTINGS, per, strict=True):
                    by_setting[setting].append(one.share_inside)
                samples = merge_samples(per)
                shares.append(samples.share_inside)
                ref_d = preimage_distance(ref_acts, query, positions=ref_mask)
                bases.append(float((ref_d < epsilon).float().mean()))
                for feature, fn in features.items():
                    score = hypothesis_score(samples, fn, queries[i], reference)
                    scores[feature].append((score.consistency, score.base_rate))
                if i == 0:
                    viewer.append(
                        _viewer_entry(task, decoder, index, name, label, queries[0], query, samples)
                    )
            readings.append(
                SiteReading(
                    site=name,
                    position=label,
                    share_inside=_mean(shares),
                    by_setting={f"T={t:g}, noise={z:g}": _mean(v) for (t, z), v in by_setting.items()},
                    base_rate=_mean(bases),
                    n_queries=len(shares),
                    hypotheses={
                        f: (_mean([c for c, _ in s if not math.isnan(c)]), _mean([b for _, b in s]))
                        for f, s in scores.items()
                    },
                )
            )
    return readings, viewer


def merge_samples(parts: list[InversionSamples]) -> InversionSamples:
    """One query's samples from several calls of ``invert``: duplicates merged (counts summed),
    nearest first. An input's distance does not depend on the call that wrote it."""
    tokens = torch.cat([p.tokens for p in parts])
    distinct, inverse = torch.unique(tokens, dim=0, return_inverse=True)
    counts = torch.zeros(len(distinct), dtype=torch.int64).scatter_add_(
        0, inverse, torch.cat([p.counts for p in parts])
    )
    distances = torch.empty(len(distinct)).scatter_(
        0, inverse, torch.cat([p.distances.float() for p in parts])
    )
    order = distances.argsort(stable=True)
    return InversionSamples(distinct[order], distances[order], counts[order], parts[0].epsilon)


def _viewer_entry(
    task: object,
    decoder: TrainedDecoder,
    index: int,
    site: str,
    label: str,
    query_tokens: torch.Tensor,
    query: torch.Tensor,
    samples: InversionSamples,
) -> ViewerEntry:
    top = samples.tokens[:VIEWER_ROWS]
    shift = likelihood_shift(decoder.decoder, top, query, decoder.null_acts[index], index)
    vocab = task.vocab  # type: ignore[attr-defined]
    rows = [
        (
            [vocab[int(t)] for t in top[r]],
            [round(float(v), 3) for v in shift[r]],
            float(samples.distances[r]),
            int(samples.counts[r]),
        )
        for r in range(len(top))
    ]
    return ViewerEntry(site, label, task.decode(query_tokens), rows)  # type: ignore[attr-defined]


# -- causal checks -------------------------------------------------------------------------------


@dataclass(frozen=True)
class CausalCheck:
    """What patching some heads at one position from a corrupted input removes."""

    what: str
    heads: list[tuple[int, int]]
    position: str
    clean: float
    """Mean logit difference (answer − contrast) of the clean run."""
    corrupt: float
    patched: float
    control_patched: float
    """The same patch from an input with the clean answer (the control)."""

    @property
    def share(self) -> float:
        """Share of the clean − corrupted difference the patch removes (1: all of it)."""
        return (self.clean - self.patched) / (self.clean - self.corrupt)

    @property
    def control_share(self) -> float:
        return (self.clean - self.control_patched) / (self.clean - self.corrupt)

    def to_dict(self) -> dict[str, object]:
        return {
            "what": self.what,
            "heads": [list(h) for h in self.heads],
            "position": self.position,
            "clean": self.clean,
            "corrupt": self.corrupt,
            "patched": self.patched,
            "control_patched": self.control_patched,
            "share": self.share,
            "control_share": self.control_share,
        }


@dataclass(frozen=True)
class PatchingMap:
    """Every head's share at the named positions: ``shares[position][layer][head]``."""

    corruption: str
    shares: dict[str, list[list[float]]]


def _share_map(sweep, positions: dict[str, int]) -> dict[str, list[list[float]]]:
    removed = 1.0 - sweep.normalised  # [layer, pos, head]
    return {name: removed[:, p].tolist() for name, p in positions.items()}


def _check(
    what: str,
    model,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    control: torch.Tensor,
    heads: list[tuple[int, int]],
    label: str,
    position: int,
    metric,
    clean_value: float,
    corrupt_value: float,
) -> CausalCheck:
    return CausalCheck(
        what=what,
        heads=heads,
        position=label,
        clean=clean_value,
        corrupt=corrupt_value,
        patched=patch_heads(model, clean, corrupt, heads, position, metric),
        control_patched=patch_heads(model, clean, control, heads, position, metric),
    )


@dataclass(frozen=True)
class Pairs:
    """Clean inputs, corrupted ones (another answer) and controls (the clean answer)."""

    clean: torch.Tensor
    corrupt: torch.Tensor
    control: torch.Tensor


def counting_pairs(task: CountingTask, n: int, g: torch.Generator) -> Pairs:
    """Held-out questions; corrupted: the query letter's count changed (the other letters and
    counts kept), control: the clean letters reshuffled."""
    clean = task.sample(n, g, train=False)
    lab = task.labels(clean)
    shift = torch.randint(1, task.max_count, (n,), generator=g)  # a different count, 1–max
    counts = lab.counts.clone()
    counts[torch.arange(n), lab.query] = (lab.query_count - 1 + shift) % task.max_count + 1
    corrupt = task.layout(lab.letters, counts, lab.query, g)
    return Pairs(clean, corrupt, task.layout(lab.letters, lab.counts, lab.query, g))


def counting_patching(
    probed: TrainedModel, n: int, seed: int
) -> tuple[list[PatchingMap], list[CausalCheck]]:
    """Patch each head at the query letter and at ``:`` from :func:`counting_pairs`; check the
    best layer-0 head at the query letter and the best last-layer head at ``:``."""
    task: CountingTask = probed.task  # type: ignore[assignment]
    model = probed.model
    pairs = counting_pairs(task, n, torch.Generator().manual_seed(seed))
    clean, corrupt, control = pairs.clean, pairs.corrupt, pairs.control
    positions = counting_positions(task)
    metric = logit_diff(clean[:, -1], corrupt[:, -1])  # read at ':', the prompts' last position
    clean, corrupt, control = clean[:, :-1], corrupt[:, :-1], control[:, :-1]
    sweep = patch_sweep(model, clean, corrupt, metric, site="head")
    maps = [PatchingMap("the query letter's count", _share_map(sweep, positions))]
    removed = 1.0 - sweep.normalised
    checks = []
    for layer, label in ((0, "query letter"), (int(model.cfg.n_layers) - 1, ":")):
        head = int(removed[layer, positions[label]].argmax())
        checks.append(
            _check(
                f"layer-{layer} head at the {label}",
                model,
                clean,
                corrupt,
                control,
                [(layer, head)],
                label,
                positions[label],
                metric,
                sweep.clean,
                sweep.corrupt,
            )
        )
    return maps, checks


def _redraw(
    n: int, g: torch.Generator, draw: Callable[[int], torch.Tensor], accept: Callable[..., torch.Tensor]
) -> torch.Tensor:
    """Rows drawn by ``draw`` until ``accept(rows, index)`` holds for every one (rejection)."""
    out = draw(n)
    todo = torch.arange(n)
    for _ in range(1000):
        ok = accept(out[todo], todo)
        todo = todo[~ok]
        if not len(todo):
            return out
        out[todo] = draw(len(todo))
    raise RuntimeError("rejection sampling did not converge")  # a bug, not a user error


def _first_digit(task: AdditionTask, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The first answer digit's token of the questions with operand digits ``a``, ``b``."""
    return task.assemble(a, b)[:, 2 * task.n_digits + 2]


def _carry_in(task: AdditionTask, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Whether the lower columns carry into the top one (operand digits units first)."""
    nd = task.n_digits
    powers = 10 ** torch.arange(nd - 1)
    return ((a[:, :-1] * powers).sum(1) + (b[:, :-1] * powers).sum(1)) >= 10 ** (nd - 1)


def _replaced(
    a: torch.Tensor, b: torch.Tensor, columns: list[int], new: torch.Tensor, rows: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ``rows`` of ``a``, ``b`` with ``columns`` replaced by ``new`` ([rows, 2·columns])."""
    a2, b2 = a[rows].clone(), b[rows].clone()
    k = len(columns)
    a2[:, columns], b2[:, columns] = new[:, :k], new[:, k:]
    return a2, b2


def addition_hundreds_pairs(task: AdditionTask, n: int, g: torch.Generator) -> Pairs:
    """Corrupted: the top (hundreds) digits redrawn so that the first answer digit changes;
    control: the units digits redrawn with the first answer digit kept."""
    a, b = (x.clone() for x in task.operands(task.sample(n, g)))
    top = [task.n_digits - 1]
    first = _first_digit(task, a, b)
    new = _redraw(
        n,
        g,
        lambda m: torch.randint(1, 10, (m, 2), generator=g),
        lambda t, rows: _first_digit(task, *_replaced(a, b, top, t, rows)) != first[rows],
    )
    corrupt = task.assemble(*_replaced(a, b, top, new, torch.arange(n)))
    control = _units_redrawn(
        task, a, b, g, lambda a2, b2, rows: _first_digit(task, a2, b2) == first[rows]
    )
    return Pairs(task.assemble(a, b), corrupt, control)


def addition_carry_pairs(task: AdditionTask, n: int, g: torch.Generator) -> Pairs:
    """Clean: top digits summing to 9, so the carry into that column decides the first answer
    digit; corrupted: the lower digits redrawn so that the carry changes; control: the units
    redrawn with the carry kept."""
    nd = task.n_digits
    a, b = (x.clone() for x in task.operands(task.sample(n, g)))
    a[:, -1] = torch.randint(1, 9, (n,), generator=g)
    b[:, -1] = 9 - a[:, -1]
    carry = _carry_in(task, a, b)
    lower = list(range(nd - 1))
    new = _redraw(
        n,
        g,
        lambda m: torch.randint(0, 10, (m, 2 * (nd - 1)), generator=g),
        lambda t, rows: _carry_in(task, *_replaced(a, b, lower, t, rows)) != carry[rows],
    )
    corrupt = task.assemble(*_replaced(a, b, lower, new, torch.arange(n)))
    control = _units_redrawn(task, a, b, g, lambda a2, b2, rows: _carry_in(task, a2, b2) == carry[rows])
    return Pairs(task.assemble(a, b), corrupt, control)


def addition_patching(
    probed: TrainedModel, n: int, seed: int, threshold: float
) -> tuple[list[PatchingMap], list[CausalCheck]]:
    """The first answer digit read at ``=``, under :func:`addition_hundreds_pairs` (the fewest
    layer-0 heads that carry ``threshold`` of it) and :func:`addition_carry_pairs` (the best
    single head)."""
    task: AdditionTask = probed.task  # type: ignore[assignment]
    model = probed.model
    g = torch.Generator().manual_seed(seed)
    equals = 2 * task.n_digits + 1
    positions = {"=": equals}
    prompt = slice(0, equals + 1)
    maps: list[PatchingMap] = []
    p = addition_hundreds_pairs(task, n, g)
    checks = _greedy_layer0(
        model,
        p.clean[:, prompt],
        p.corrupt[:, prompt],
        p.control[:, prompt],
        p.clean[:, equals + 1],
        p.corrupt[:, equals + 1],
        positions,
        threshold,
        maps,
        "hundreds digits",
    )
    p = addition_carry_pairs(task, n, g)
    metric = logit_diff(p.clean[:, equals + 1], p.corrupt[:, equals + 1])
    clean, corrupt, control = p.clean[:, prompt], p.corrupt[:, prompt], p.control[:, prompt]
    sweep = patch_sweep(model, clean, corrupt, metric, site="head")
    maps.append(PatchingMap("carry into the hundreds", _share_map(sweep, positions)))
    removed = (1.0 - sweep.normalised)[:, equals]  # [layer, head]
    flat = int(removed.flatten().argmax())
    head = (flat // removed.shape[1], flat % removed.shape[1])
    checks.append(
        _check(
            "the best single head at = for the carry",
            model,
            clean,
            corrupt,
            control,
            [head],
            "=",
            equals,
            metric,
            sweep.clean,
            sweep.corrupt,
        )
    )
    return maps, checks


def _units_redrawn(
    task: AdditionTask,
    a: torch.Tensor,
    b: torch.Tensor,
    g: torch.Generator,
    keep: Callable[..., torch.Tensor],
) -> torch.Tensor:
    """The same questions with their units digits redrawn so that ``keep(a, b, rows)`` holds."""
    n = len(a)

    def with_units(units: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        a2, b2 = a[rows].clone(), b[rows].clone()
        a2[:, 0], b2[:, 0] = units[:, 0], units[:, 1]
        return a2, b2

    units = _redraw(
        n,
        g,
        lambda m: torch.randint(0, 10, (m, 2), generator=g),
        lambda u, rows: keep(*with_units(u, rows), rows),
    )
    return task.assemble(*with_units(units, torch.arange(n)))


def _greedy_layer0(
    model,
    clean: torch.Tensor,
    corrupt: torch.Tensor,
    control: torch.Tensor,
    answer: torch.Tensor,
    contrast: torch.Tensor,
    positions: dict[str, int],
    threshold: float,
    maps: list[PatchingMap],
    corruption: str,
) -> list[CausalCheck]:
    """The fewest layer-0 heads at ``=`` (best first) whose joint patch removes ``threshold`` of
    the effect (or all of them)."""
    equals = positions["="]
    metric = logit_diff(answer, contrast)  # read at '=', the prompts' last position
    sweep = patch_sweep(model, clean, corrupt, metric, site="head")
    maps.append(PatchingMap(corruption, _share_map(sweep, positions)))
    order = (1.0 - sweep.normalised)[0, equals].argsort(descending=True).tolist()
    chosen: list[tuple[int, int]] = []
    for head in order:
        chosen.append((0, int(head)))
        check = _check(
            f"layer-0 heads at = for the {corruption}",
            model,
            clean,
            corrupt,
            control,
            list(chosen),
            "=",
            equals,
            metric,
            sweep.clean,
            sweep.corrupt,
        )
        if check.share >= threshold:
            break
    return [check]


# -- completeness by enumeration -----------------------------------------------------------------


@dataclass(frozen=True)
class CompletenessPoint:
    """One query's exact preimage against the decoder's samples."""

    site: str
    query: str
    recall: float
    precision: float
    preimage_size: int
    n_samples: int
    likelihood_auroc: float
    """How well the decoder's likelihood alone tells inputs inside ε from the random ones outside:
    the chance that a random inside input scores above a random outside one (0.5: not at all)."""
    scatter: list[tuple[float, float, bool]]
    """(true D, decoder log-likelihood of the input in nats, sampled?) for every input inside ε
    and a random set outside, capped."""


def addition_completeness(
    probed: TrainedModel,
    decoder: TrainedDecoder,
    sites: list[str],
    n_queries: int,
    per_setting: int,
    epsilon: float,
    seed: int,
    scatter_cap: int = 1500,
) -> list[CompletenessPoint]:
    """For queries at ``=``, the exact ε-preimage over every question with operands from
    ``min_operand`` (810,000 for the paper's 100–999), then the decoder's recall and precision."""
    task: AdditionTask = probed.task  # type: ignore[assignment]
    model, cfg = probed.model, decoder.config
    nd, low = task.n_digits, task.min_operand
    values = torch.arange(low, 10**nd)
    m = len(values)
    digits = torch.stack([(values // 10**c) % 10 for c in range(nd)], dim=1)  # units first
    g = torch.Generator().manual_seed(seed)
    equals = 2 * nd + 1
    queries = task.sample(n_queries, g)
    points = []
    for name in sites:
        index = cfg.sites.index(name)
        site = parse_site(name, model)
        query_acts = site_activations(model, queries, site)[:, equals].float()
        true_d = torch.empty(n_queries, m * m)
        for start in range(0, m, 20):  # 20 first operands × every second operand per chunk
            a_idx = torch.arange(start, min(start + 20, m)).repeat_interleave(m)
            b_idx = torch.arange(m).repeat(len(a_idx) // m)
            tokens = task.assemble(digits[a_idx], digits[b_idx])
            acts = site_activations(model, tokens, site, batch_size=4096).float()
            mask = allowed_positions(cfg, tokens)
            for q in range(n_queries):
                true_d[q, a_idx * m + b_idx] = preimage_distance(acts, query_acts[q], positions=mask)
        for q in range(n_queries):
            samples = invert(
                model,
                decoder.decoder,
                query_acts[q],
                site,
                index,
                g,
                per_setting=per_setting,
                epsilon=epsilon,
                allowed=lambda t: allowed_positions(cfg, t),
            )
            ids = _space_index(task, samples.tokens)
            sampled = ids[ids >= 0]
            score = completeness(true_d[q], sampled, epsilon)
            # a sample that is no question of the space (malformed, a wrong answer) is outside
            found = int((true_d[q][sampled] < epsilon).sum()) if len(sampled) else 0
            precision = found / len(samples.tokens) if len(samples.tokens) else math.nan
            inside = (true_d[q] < epsilon).nonzero().flatten()
            inside = inside[torch.randperm(len(inside), generator=g)[:scatter_cap]]
            outside = torch.randint(0, m * m, (scatter_cap,), generator=g)
            shown = torch.cat([inside, outside])
            a_idx, b_idx = shown // m, shown % m
            tokens = task.assemble(digits[a_idx], digits[b_idx])
            loglik = token_log_likelihoods(decoder.decoder, tokens, query_acts[q], index).sum(1)
            was = torch.isin(shown, sampled)
            points.append(
                CompletenessPoint(
                    site=name,
                    query=task.decode(queries[q]),
                    recall=score.recall,
                    precision=precision,
                    preimage_size=score.preimage_size,
                    n_samples=len(samples.tokens),
                    likelihood_auroc=_auroc(
                        loglik[: len(inside)], loglik[len(inside) :][true_d[q, outside] >= epsilon]
                    ),
                    scatter=[
                        (round(float(d), 4), round(float(ll), 3), bool(w))
                        for d, ll, w in zip(true_d[q, shown], loglik, was, strict=True)
                    ],
                )
            )
    return points


def _space_index(task: AdditionTask, tokens: torch.Tensor) -> torch.Tensor:
    """Each sample's index in the enumerated space, or −1 when it is not one of its questions
    (a non-digit in an operand, an operand below ``min_operand``, a wrong answer)."""
    a, b, valid = _operand_values(task, tokens)
    low, m = task.min_operand, 10**task.n_digits - task.min_operand
    valid &= (a >= low) & (b >= low)
    nd = task.n_digits
    powers = 10 ** torch.arange(nd)
    a_digits = (a.clamp(min=0)[:, None] // powers) % 10
    b_digits = (b.clamp(min=0)[:, None] // powers) % 10
    valid &= (task.assemble(a_digits, b_digits) == tokens).all(1)
    return torch.where(valid, (a - low) * m + (b - low), -1)


def _auroc(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann–Whitney statistic)."""
    if not len(positive) or not len(negative):
        return math.nan
    above = (positive[:, None] > negative[None, :]).double().mean()
    ties = (positive[:, None] == negative[None, :]).double().mean()
    return float(above + 0.5 * ties)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan
