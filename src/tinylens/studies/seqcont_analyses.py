"""The seqcont study's measurements, each returning a JSON-able dict (figures are drawn elsewhere).

The methods are task-agnostic and live in :mod:`tinylens.analysis` (``behaviour``,
``find_circuit``); this module turns the task's words into prompts and the methods' results into
the study's dicts.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int

from tinylens.analysis import (
    ComponentGraph,
    ContrastPrompts,
    HookedModel,
    faithfulness,
    find_circuit,
    mean_node_outputs,
    node_circuit,
    successor_scores,
)
from tinylens.analysis import behaviour as measure_behaviour
from tinylens.errors import ConfigError, TokenError
from tinylens.tasks.seqcont import FAMILIES, PERIOD, TEMPLATE, SeqcontTask, filler_words


class WordEncoder:
    """Maps the task's words to a model's token ids: ours one to one, or a Hugging Face tokenizer's
    single-token ``" word"`` forms, behind its BOS token (as TransformerLens prepends for GPT-2)."""

    def __init__(self, task: SeqcontTask, tokenizer: Any | None = None) -> None:
        self.task = task
        self.bos: int | None = None
        if tokenizer is None:
            self.table = torch.arange(task.d_vocab)
            return
        self.bos = tokenizer.bos_token_id
        ids = []
        for word in task.vocab:
            pieces = tokenizer.encode(word if word == PERIOD else " " + word, add_special_tokens=False)
            whole = len(pieces) == 1 and pieces[0] != tokenizer.unk_token_id
            ids.append(pieces[0] if whole else -1)
        self.table = torch.tensor(ids)
        for word in (*TEMPLATE, PERIOD):
            self._require_single(word, "template word")
        singles = [w for w in filler_words() if self.table[task.vocab.index(w)] >= 0]
        if len(singles) < task.n_items:
            raise TokenError(
                f"fewer than {task.n_items} of the filler words are single tokens for this tokenizer"
            )
        # a filler that splits into several tokens borrows a single-token filler's id, so every
        # prompt keeps one token per word and all prompts align position by position
        for k, word in enumerate(w for w in filler_words() if w not in singles):
            self.table[task.vocab.index(word)] = self.table[task.vocab.index(singles[k % len(singles)])]

    def require_family(self, family: str) -> None:
        """Every member must be one token: prompts must align, and the answer is one token."""
        for member in FAMILIES[family]:
            self._require_single(member, f"{family} member (an answer)")

    def _require_single(self, word: str, what: str) -> None:
        if self.table[self.task.vocab.index(word)] < 0:
            raise TokenError(
                f"the {what} {word!r} is not a single token for this tokenizer; the study needs "
                "single-token answers and prompts that align token by token"
            )

    def __call__(self, tokens: Int[torch.Tensor, "batch pos"]) -> Int[torch.Tensor, "batch pos2"]:
        out = self.table[tokens]
        if self.bos is not None:
            out = torch.cat([torch.full((len(out), 1), self.bos), out], dim=1)
        return out

    def members(self, family: str) -> Int[torch.Tensor, " member"]:
        return self.table[[self.task.vocab.index(m) for m in FAMILIES[family]]]


@dataclass(frozen=True)
class FamilyPrompts(ContrastPrompts):
    """Clean and corrupted prompts of one family, in the model's token ids."""

    family: str
    """The sequence family (``numerals``, ``months``, …)."""
    text: list[str]
    """The first few full prompts as words, for the report."""


def family_prompts(
    task: SeqcontTask, encoder: WordEncoder, family: str, n: int, seed: int
) -> FamilyPrompts:
    encoder.require_family(family)
    rng = torch.Generator().manual_seed(seed)
    full = task.sample(n, rng, family=family)
    corrupt = task.corrupt(full, rng)
    return FamilyPrompts(
        family=family,
        clean=encoder(full[:, :-1]),
        corrupt=encoder(corrupt[:, :-1]),
        answer=encoder.table[task.answer(full)],
        contrast=encoder.table[task.contrast(full)],
        text=[task.decode(row) for row in full[:3]],
    )


def behaviour(model: HookedModel, prompts: FamilyPrompts) -> dict[str, float]:
    """:func:`tinylens.analysis.behaviour` as the study's dict."""
    return asdict(measure_behaviour(model, prompts))


def family_circuit(
    model: HookedModel,
    graph: ComponentGraph,
    prompts: FamilyPrompts,
    *,
    min_share: float,
    ig_steps: int,
) -> dict[str, Any]:
    """:func:`tinylens.analysis.find_circuit` (``model`` is ``graph.model``) as the study's dict."""
    found = find_circuit(graph, prompts, min_share=min_share, ig_steps=ig_steps)
    curve = found.curve
    return {
        "nodes": list(found.node_names),
        "heads": [n for n in found.node_names if n.startswith("A")],
        "mlps": [n for n in found.node_names if n.startswith("M")],
        "node_share": found.nodes.share,
        "dropped": list(found.nodes.dropped),
        "edges": sorted(f"{s}->{d}" for s, d in found.edges.circuit.edges),
        "edge_scores": found.edge_scores,
        "edge_share": found.edges.share,
        "n_edges_node_circuit": len(found.nodes.circuit),
        "n_edges_graph": found.n_edges_graph,
        "eap_ig_curve": {
            "n_edges": [k for k, _ in curve],
            "share": [s.share for _, s in curve],
            "normalised": [s.normalised for _, s in curve],
        },
        "head_patching": found.head_patching.normalised.tolist(),
        "ablated_all_share": curve[0][1].empty / curve[0][1].full,
    }


def cross_family(
    graph: ComponentGraph, circuits: dict[str, dict[str, Any]], prompts: dict[str, FamilyPrompts]
) -> dict[str, Any]:
    """Share of family B's logit difference kept by family A's node circuit, for every A, B."""
    families = list(circuits)
    shares = []
    for a in families:
        circuit = node_circuit(graph, circuits[a]["nodes"])
        row = []
        for b in families:
            p = prompts[b]
            ablated = mean_node_outputs(graph, p.corrupt)
            row.append(faithfulness(graph, circuit, p.clean, ablated=ablated, metric=p.metric).share)
        shares.append(row)
    return {"families": families, "share": shares}


def random_circuits(
    graph: ComponentGraph, like: dict[str, Any], prompts: FamilyPrompts, n: int, seed: int
) -> dict[str, Any]:
    """Shares kept by random node circuits with as many heads and MLPs as ``like``: the control
    for "this circuit does the task" (the paper's unrelated IOI circuit kept ≈ −7%)."""
    rng = torch.Generator().manual_seed(seed)
    heads = [x.name for x in graph.nodes if x.head is not None]
    mlps = [x.name for x in graph.nodes if x.name.startswith("M")]
    ablated = mean_node_outputs(graph, prompts.corrupt)
    if n < 1:
        raise ConfigError(f"the random-circuit control needs at least one circuit, got n={n}")
    shares = []
    for _ in range(n):
        pick = [heads[int(i)] for i in torch.randperm(len(heads), generator=rng)[: len(like["heads"])]]
        pick += [mlps[int(i)] for i in torch.randperm(len(mlps), generator=rng)[: len(like["mlps"])]]
        circuit = node_circuit(graph, pick)
        score = faithfulness(graph, circuit, prompts.clean, ablated=ablated, metric=prompts.metric)
        shares.append(score.share)
    return {"family": prompts.family, "shares": shares, "mean": sum(shares) / len(shares)}


def successor_heads(graph: ComponentGraph, encoder: WordEncoder, families: list[str]) -> dict[str, Any]:
    scores = successor_scores(graph.model, [encoder.members(f) for f in families])
    best = int(scores.flatten().argmax())
    layer, head = divmod(best, graph.n_heads)
    # a head that ranks members at random picks the successor 1 time in (family size)
    sizes = [len(FAMILIES[f]) for f in families]
    chance = sum((n - 1) / n for n in sizes) / sum(n - 1 for n in sizes)
    return {
        "scores": scores.tolist(),
        "top": f"A{layer}.{head}",
        "top_score": float(scores[layer, head]),
        "chance": float(chance),
        "families": families,
    }
