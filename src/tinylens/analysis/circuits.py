"""Circuits: sets of edges of the component graph, run alone and scored.

Background:
    A circuit is a set of edges of :class:`~tinylens.analysis.graph.ComponentGraph`. Running "only
    the circuit" means every other edge reads an *ablated* value instead of its node's real output:
    the node's output on a corrupted prompt (:func:`node_outputs`), or its mean over reference
    prompts (:func:`mean_node_outputs`). The circuit's *share* is the metric it keeps,
    ``m(circuit) / m(full model)`` (the paper's "% of the logit difference"); *normalised* also
    subtracts what is left with every edge ablated. How circuits are found lives beside this
    module: :mod:`~tinylens.analysis.attribution` (path patching, edge attribution),
    :mod:`~tinylens.analysis.pruning` (iterative pruning) and :mod:`~tinylens.analysis.search`
    (the whole recipe).

Usage:
    graph = ComponentGraph(model)
    ablated = mean_node_outputs(graph, corrupt)      # or node_outputs(graph, corrupt)
    circuit = node_circuit(graph, ["A0.1", "M0"])
    faithfulness(graph, circuit, clean, ablated=ablated, metric=metric).share

References:
    Wang et al. 2022 (IOI: circuits, mean ablation, faithfulness); Conmy et al. 2023 (ACDC);
    Lan & Barez 2023, "Interpreting Shared Circuits for Ordered Sequence Prediction".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tinylens.analysis.graph import ComponentGraph, NodeOutputs
from tinylens.analysis.metrics import Metric
from tinylens.errors import ConfigError

# Variant rows × positions × width per chunk of a batched edge sweep (~256 MB of fp32).
MAX_CHUNK_ELEMENTS = 64 * 2**20


@dataclass(frozen=True)
class Circuit:
    """A set of edges ``(node, input)`` of a component graph."""

    edges: frozenset[tuple[str, str]]

    @property
    def nodes(self) -> frozenset[str]:
        """Nodes with an edge in the circuit (``logits`` excluded)."""
        inputs = {dst.rsplit(".", 1)[0] if dst.count(".") == 2 else dst for _, dst in self.edges}
        return frozenset({src for src, _ in self.edges} | inputs) - {"logits"}

    def __len__(self) -> int:
        return len(self.edges)


@dataclass(frozen=True)
class CircuitScore:
    """The metric of a circuit run alone, beside the full model's and the fully ablated model's."""

    circuit: float
    full: float
    empty: float

    @property
    def share(self) -> float:
        """``circuit / full``: the share of the full model's metric the circuit keeps."""
        return self.circuit / self.full

    @property
    def normalised(self) -> float:
        """``(circuit − empty) / (full − empty)``: 1 = all of it, 0 = no better than nothing."""
        return (self.circuit - self.empty) / (self.full - self.empty)


def node_circuit(graph: ComponentGraph, nodes: Iterable[str]) -> Circuit:
    """Every edge between the given nodes, the embedding and the logits."""
    keep = set(nodes) | {"embed", "logits"}
    unknown = keep - set(graph.node_index) - {"logits"}
    if unknown:
        raise ConfigError(f"unknown nodes {sorted(unknown)}; nodes are embed, A<l>.<h>, M<l>")
    return Circuit(frozenset((s, d) for s, d in graph.edges if owner(d) in keep and s in keep))


def circuit_mask(graph: ComponentGraph, circuit: Circuit) -> torch.Tensor:
    """The ``[input, node]`` ablation mask of a circuit: 1 on every edge outside it."""
    inside = graph.edge_mask(sorted(circuit.edges)) if circuit.edges else graph.zero_mask()
    return graph.adjacency.float() - inside


def mean_node_outputs(
    graph: ComponentGraph, reference: Int[torch.Tensor, "ref pos"]
) -> Float[torch.Tensor, "node 1 pos d_model"]:
    """Every node's output averaged over reference prompts, per position: the ablated value of
    mean ablation, the same for every prompt."""
    with torch.no_grad():
        return graph.run(reference).outputs.mean(1, keepdim=True)


def node_outputs(
    graph: ComponentGraph, tokens: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "node batch pos d_model"]:
    """Every node's output on ``tokens``: with corrupted prompts, the ablated value of resample
    ablation (prompt i's edges read corrupted prompt i's outputs)."""
    with torch.no_grad():
        return graph.run(tokens).outputs


def faithfulness(
    graph: ComponentGraph,
    circuit: Circuit,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablated: NodeOutputs,
    metric: Metric,
) -> CircuitScore:
    """Run the circuit alone (every other edge ablated) and score it against the full model."""
    if not circuit.edges:
        raise ConfigError("the circuit is empty: it has no edges to run")
    masks = torch.stack([graph.zero_mask(), circuit_mask(graph, circuit), graph.adjacency.float()])
    full, inside, empty = metric_per_variant(graph, tokens, ablated, masks, metric)
    return CircuitScore(circuit=inside, full=full, empty=empty)


def faithfulness_curve(
    graph: ComponentGraph,
    scores: Float[torch.Tensor, "input node"],
    sizes: Iterable[int],
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablated: NodeOutputs,
    metric: Metric,
) -> list[tuple[int, CircuitScore]]:
    """Faithfulness of the top-k edges by |score| for each k in ``sizes`` (batched forwards)."""
    sizes = sorted(set(sizes))
    circuits = [top_edges(graph, scores, k) for k in sizes]
    masks = [graph.zero_mask(), graph.adjacency.float()]
    masks += [circuit_mask(graph, c) for c in circuits]
    values = metric_per_variant(graph, tokens, ablated, torch.stack(masks), metric)
    full, empty = values[0], values[1]
    return [
        (k, CircuitScore(circuit=v, full=full, empty=empty))
        for k, v in zip(sizes, values[2:], strict=True)
    ]


def top_edges(graph: ComponentGraph, scores: Float[torch.Tensor, "input node"], k: int) -> Circuit:
    """The ``k`` edges with the largest absolute score."""
    if k < 1:
        raise ConfigError(f"a circuit needs at least one edge, asked for {k}")
    flat = scores.abs().masked_fill(~graph.adjacency, -1.0).flatten()
    n_edges = int(graph.adjacency.sum())
    chosen = flat.topk(min(k, n_edges)).indices
    n_nodes = len(graph.nodes)
    return Circuit(
        frozenset(
            (graph.nodes[int(i) % n_nodes].name, graph.inputs[int(i) // n_nodes].name) for i in chosen
        )
    )


def overlap(a: Iterable[object], b: Iterable[object]) -> dict[str, float]:
    """Intersection size, Jaccard index and the share of each set inside the other."""
    sa, sb = set(a), set(b)
    both = len(sa & sb)
    return {
        "intersection": float(both),
        "jaccard": both / len(sa | sb) if sa | sb else 0.0,
        "share_of_a": both / len(sa) if sa else 0.0,
        "share_of_b": both / len(sb) if sb else 0.0,
    }


def owner(input_name: str) -> str:
    """The node an input belongs to: ``A1.2.q`` → ``A1.2``; ``M0`` → ``M0``; ``logits``."""
    return input_name.rsplit(".", 1)[0] if input_name.count(".") == 2 else input_name


def metric_per_variant(
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "batch pos"],
    ablated: NodeOutputs,
    masks: Float[torch.Tensor, "variant input node"],
    metric: Metric,
) -> list[float]:
    """The metric of one masked run per variant (edges with mask 1 read ``ablated``), in chunks
    of one forward pass each."""
    batch, n_pos = tokens.shape
    model_cfg = graph.model.cfg
    # the biggest tensors of a graph pass: every node's output difference read by a layer's
    # q/k/v inputs, and the logits
    width = max(int(model_cfg.d_model) * (3 * graph.n_heads + len(graph.nodes)), int(model_cfg.d_vocab))
    chunk = max(1, MAX_CHUNK_ELEMENTS // (batch * n_pos * width))
    out: list[float] = []
    with torch.no_grad():
        for start in range(0, len(masks), chunk):
            part = masks[start : start + chunk]
            logits = graph.run(tokens, patch=ablated, mask=part).logits
            logits = logits.view(len(part), batch, *logits.shape[1:])
            out.extend(float(metric(logits[v])) for v in range(len(part)))
    return out
