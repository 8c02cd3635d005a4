"""Iterative pruning: drop components, then edges, while the circuit keeps most of the metric.

Background:
    Lan & Barez (2023) find a circuit by ablating each component in turn, from the last layer back
    to the first and then forward again, and dropping it for good when what is left still keeps
    80% of the full model's metric; then the same over the remaining circuit's edges. Every trial
    is one masked run of the :class:`~tinylens.analysis.graph.ComponentGraph`, with the dropped
    edges reading their ablated values.

Usage:
    nodes = prune_nodes(graph, clean, ablated=mean_node_outputs(graph, corrupt), metric=metric)
    edges = prune_edges(graph, nodes.circuit, clean, ablated=..., metric=metric)

References:
    Lan & Barez 2023, "Interpreting Shared Circuits for Ordered Sequence Prediction in a Large
    Language Model" (arXiv:2311.04131).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Int

from tinylens.analysis.circuits import Circuit, circuit_mask, metric_per_variant, node_circuit
from tinylens.analysis.graph import ComponentGraph, NodeOutputs
from tinylens.analysis.metrics import Metric
from tinylens.errors import ConfigError


@dataclass(frozen=True)
class Pruned:
    """What iterative pruning kept, what it dropped (in order) and the share the result keeps."""

    circuit: Circuit
    """The circuit left."""
    dropped: tuple[str, ...]
    """Components (``A0.1``, ``M0``) or edges (``A0.1->M0``) dropped, in the order dropped."""
    share: float
    """The kept circuit's metric as a share of the full model's, as measured; ≥ ``min_share``
    unless the circuit handed to :func:`prune_edges` was already below it (then nothing is dropped)."""


def prune_nodes(
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablated: NodeOutputs,
    metric: Metric,
    min_share: float = 0.8,
) -> Pruned:
    """Lan & Barez's iterative pruning of heads and MLPs.

    Components are visited from the last layer to the first, then from the first to the last among
    those left. A component is dropped (and stays ablated) when the circuit without it, on top of
    those already dropped, still keeps ``min_share`` of the full model's metric. (The paper's "drop
    a component when the score falls by < 20%", read against the full model, so that the result is
    guaranteed to keep 80%.)
    """
    components = [n.name for n in graph.nodes if n.name != "embed"]
    kept = set(components)
    dropped: list[str] = []
    full = _full_metric(graph, tokens, metric)
    share = 1.0
    for name in [*reversed(components), *components]:
        if name not in kept:
            continue
        trial = node_circuit(graph, kept - {name})
        value = metric_per_variant(
            graph, tokens, ablated, circuit_mask(graph, trial).unsqueeze(0), metric
        )[0]
        if value / full >= min_share:
            kept.discard(name)
            dropped.append(name)
            share = value / full
    return Pruned(node_circuit(graph, kept), tuple(dropped), share)


def prune_edges(
    graph: ComponentGraph,
    circuit: Circuit,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablated: NodeOutputs,
    metric: Metric,
    min_share: float = 0.8,
) -> Pruned:
    """Drop each edge of ``circuit`` (receivers from the last layer back) whose ablation, on top of
    those already dropped, leaves the circuit with ``min_share`` of the full model's metric; the
    edge-level step after :func:`prune_nodes` (each trial is a path patch of that edge)."""
    if not circuit.edges:
        raise ConfigError("the circuit is empty: there are no edges to prune")
    full = _full_metric(graph, tokens, metric)
    edges = set(circuit.edges)
    mask = circuit_mask(graph, circuit).unsqueeze(0)
    share = metric_per_variant(graph, tokens, ablated, mask, metric)[0] / full
    dropped: list[str] = []
    by_receiver = sorted(edges, key=lambda e: (-graph.input_index[e[1]], graph.node_index[e[0]]))
    for edge in by_receiver:
        if len(edges) == 1:
            break
        mask = circuit_mask(graph, Circuit(frozenset(edges - {edge}))).unsqueeze(0)
        value = metric_per_variant(graph, tokens, ablated, mask, metric)[0] / full
        if value >= min_share:
            edges.discard(edge)
            dropped.append(f"{edge[0]}->{edge[1]}")
            share = value
    return Pruned(Circuit(frozenset(edges)), tuple(dropped), share)


def _full_metric(graph: ComponentGraph, tokens: torch.Tensor, metric: Metric) -> float:
    with torch.no_grad():
        full = float(metric(graph.run(tokens).logits))
    if not full > 0:
        raise ConfigError(
            f"the full model's metric is {full:.4g}; pruning keeps a share of a positive metric "
            "(does the model solve these prompts?)"
        )
    return full
