"""Finding a circuit end to end: prune nodes, prune edges, rank edges by EAP-IG, patch heads.

Background:
    Lan & Barez (2023) find each task's circuit by iterative pruning of components and then of
    edges, each step keeping ``min_share`` of the full model's logit difference under mean
    ablation. Beside it :func:`find_circuit` ranks every edge by EAP-IG under the same ablation and
    measures the faithfulness of the top-k edges for k on a log scale (how few edges carry the
    behaviour), and patches every head (all positions at once, mean of the corrupted run) for a
    picture of which heads matter. Task-agnostic: it needs contrast prompts and a graph.

Usage:
    graph = ComponentGraph(model)
    found = find_circuit(graph, ContrastPrompts(clean, corrupt, answer, contrast), min_share=0.8)
    found.node_names, found.edges.share, found.curve[-1]

References:
    Lan & Barez 2023, "Interpreting Shared Circuits for Ordered Sequence Prediction in a Large
    Language Model" (arXiv:2311.04131); Hanna, Pezzelle & Belinkov 2024 (EAP-IG).
"""

from __future__ import annotations

from dataclasses import dataclass

from tinylens.analysis.attribution import edge_attribution
from tinylens.analysis.circuits import CircuitScore, faithfulness_curve, mean_node_outputs
from tinylens.analysis.contrast import ContrastPrompts
from tinylens.analysis.graph import ComponentGraph
from tinylens.analysis.patching import PatchingResult, patch_sweep
from tinylens.analysis.pruning import Pruned, prune_edges, prune_nodes


@dataclass(frozen=True)
class FoundCircuit:
    """What :func:`find_circuit` found, and the measurements beside it."""

    nodes: Pruned
    """Node pruning: the node circuit, the components dropped, the share kept."""
    edges: Pruned
    """Edge pruning of the node circuit."""
    node_names: tuple[str, ...]
    """The node circuit's heads and MLPs (embedding left out), in graph order."""
    curve: tuple[tuple[int, CircuitScore], ...]
    """Faithfulness of the top-k edges by EAP-IG score, for k from 1 to every edge (log scale)."""
    head_patching: PatchingResult
    """Every head patched at all positions at once with its mean on the corrupted prompts."""
    n_edges_graph: int
    """Edges of the whole graph."""
    edge_scores: dict[str, float]
    """EAP-IG score of each edge of the edge-pruned circuit (``sender->receiver``, e.g.
    ``A0.1->A1.0.q``): the metric's estimated change when that edge alone is ablated."""


def find_circuit(
    graph: ComponentGraph, prompts: ContrastPrompts, *, min_share: float = 0.8, ig_steps: int = 5
) -> FoundCircuit:
    """Node pruning, then edge pruning, an EAP-IG faithfulness curve and a head patching map,
    all under mean ablation over the corrupted prompts.

    Args:
        graph: the model's component graph.
        prompts: the behaviour to explain; its metric is the logit difference.
        min_share: the share of the full model's metric a pruned circuit must keep.
        ig_steps: integrated-gradient steps of the edge ranking (0: plain EAP).
    """
    ablated = mean_node_outputs(graph, prompts.corrupt)
    metric = prompts.metric
    nodes = prune_nodes(graph, prompts.clean, ablated=ablated, metric=metric, min_share=min_share)
    edges = prune_edges(
        graph, nodes.circuit, prompts.clean, ablated=ablated, metric=metric, min_share=min_share
    )
    # ranked by the same intervention the curve measures: mean ablation
    scores = edge_attribution(graph, prompts.clean, metric, ablated=ablated, ig_steps=ig_steps)
    n_edges = len(graph.edges)
    sizes = sorted({min(n_edges, round(n_edges ** (k / 12))) for k in range(1, 13)})
    curve = faithfulness_curve(graph, scores, sizes, prompts.clean, ablated=ablated, metric=metric)
    heads = patch_sweep(
        graph.model,
        prompts.clean,
        prompts.corrupt,
        metric,
        site="head",
        per_position=False,
        source="mean",
    )
    names = sorted(nodes.circuit.nodes - {"embed"}, key=graph.node_index.__getitem__)
    return FoundCircuit(
        nodes=nodes,
        edges=edges,
        node_names=tuple(names),
        curve=tuple(curve),
        head_patching=heads,
        n_edges_graph=n_edges,
        edge_scores={
            f"{src}->{dst}": float(scores[graph.input_index[dst], graph.node_index[src]])
            for src, dst in sorted(edges.circuit.edges)
        },
    )
