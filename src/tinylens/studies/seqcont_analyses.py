"""The seqcont study's measurements, each returning a JSON-able dict (figures are drawn elsewhere)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int

from tinylens.analysis import circuits as C
from tinylens.analysis.graph import ComponentGraph
from tinylens.analysis.patching import logit_diff, patch_sweep
from tinylens.analysis.protocol import HookedModel
from tinylens.analysis.successor import successor_scores
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


@dataclass
class FamilyPrompts:
    """Clean and corrupted prompts of one family, in the model's token ids."""

    family: str
    clean: Int[torch.Tensor, "batch pos"]
    corrupt: Int[torch.Tensor, "batch pos"]
    answer: Int[torch.Tensor, " batch"]
    contrast: Int[torch.Tensor, " batch"]
    text: list[str]

    @property
    def metric(self) -> C.Metric:
        return logit_diff(self.answer, self.contrast)


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
    """Top-1 accuracy, mean logit difference, and the same on the corrupted prompts."""
    with torch.no_grad():
        clean = model(prompts.clean)[:, -1]
        corrupt = model(prompts.corrupt)[:, -1]
    rows = torch.arange(len(clean))
    return {
        "accuracy": float((clean.argmax(-1) == prompts.answer).float().mean()),
        "logit_diff": float((clean[rows, prompts.answer] - clean[rows, prompts.contrast]).mean()),
        "corrupt_logit_diff": float(
            (corrupt[rows, prompts.answer] - corrupt[rows, prompts.contrast]).mean()
        ),
        "n": len(clean),
    }


def family_circuit(
    model: HookedModel,
    graph: ComponentGraph,
    prompts: FamilyPrompts,
    *,
    min_share: float,
    ig_steps: int,
) -> dict[str, Any]:
    """Node pruning, then edge pruning, an EAP-IG faithfulness curve and a head patching map."""
    ablation = C.mean_ablation(graph, prompts.corrupt)
    metric = prompts.metric
    nodes = C.prune_nodes(graph, prompts.clean, ablation=ablation, metric=metric, min_share=min_share)
    edges = C.prune_edges(
        graph, nodes.circuit, prompts.clean, ablation=ablation, metric=metric, min_share=min_share
    )
    # ranked by the same intervention the curve measures: mean ablation
    scores = C.edge_attribution(graph, prompts.clean, metric, ablation=ablation, ig_steps=ig_steps)
    n_edges = len(graph.edges)
    sizes = sorted({min(n_edges, round(n_edges ** (k / 12))) for k in range(1, 13)})
    curve = C.faithfulness_curve(graph, scores, sizes, prompts.clean, ablation=ablation, metric=metric)
    heads = patch_sweep(
        model, prompts.clean, prompts.corrupt, metric, site="head", per_position=False, source="mean"
    )
    circuit_nodes = sorted(nodes.circuit.nodes - {"embed"}, key=graph.node_index.get)
    return {
        "nodes": circuit_nodes,
        "heads": [n for n in circuit_nodes if n.startswith("A")],
        "mlps": [n for n in circuit_nodes if n.startswith("M")],
        "node_share": nodes.share,
        "dropped": list(nodes.dropped),
        "edges": sorted(f"{s}->{d}" for s, d in edges.circuit.edges),
        "edge_share": edges.share,
        "n_edges_node_circuit": len(nodes.circuit),
        "n_edges_graph": n_edges,
        "eap_ig_curve": {
            "n_edges": [k for k, _ in curve],
            "share": [s.share for _, s in curve],
            "normalised": [s.normalised for _, s in curve],
        },
        "head_patching": heads.normalised.tolist(),
        "ablated_all_share": curve[0][1].empty / curve[0][1].full,
    }


def cross_family(
    graph: ComponentGraph, circuits: dict[str, dict[str, Any]], prompts: dict[str, FamilyPrompts]
) -> dict[str, Any]:
    """Share of family B's logit difference kept by family A's node circuit, for every A, B."""
    families = list(circuits)
    shares = []
    for a in families:
        circuit = C.node_circuit(graph, circuits[a]["nodes"])
        row = []
        for b in families:
            p = prompts[b]
            ablation = C.mean_ablation(graph, p.corrupt)
            row.append(C.faithfulness(graph, circuit, p.clean, ablation=ablation, metric=p.metric).share)
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
    ablation = C.mean_ablation(graph, prompts.corrupt)
    if n < 1:
        raise ConfigError(f"the random-circuit control needs at least one circuit, got n={n}")
    shares = []
    for _ in range(n):
        pick = [heads[int(i)] for i in torch.randperm(len(heads), generator=rng)[: len(like["heads"])]]
        pick += [mlps[int(i)] for i in torch.randperm(len(mlps), generator=rng)[: len(like["mlps"])]]
        circuit = C.node_circuit(graph, pick)
        score = C.faithfulness(graph, circuit, prompts.clean, ablation=ablation, metric=prompts.metric)
        shares.append(score.share)
    return {"family": prompts.family, "shares": shares, "mean": sum(shares) / len(shares)}


def successor_heads(graph: ComponentGraph, encoder: WordEncoder, families: list[str]) -> dict[str, Any]:
    scores = successor_scores(graph, [encoder.members(f) for f in families])
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
