"""Edge effects: path patching of single edges, and edge attribution patching's estimate of all.

Background:
    - Path patching (Wang et al. 2022): the effect of one edge, sender → receiver's q/k/v or the
      logits, patched from the ablated value with everything else clean.
    - Edge attribution patching (EAP, Syed et al. 2023): a first-order estimate of every edge's
      path-patching effect from one forward and one backward pass,
      ``(out_ablated(u) − out_clean(u)) · ∂metric/∂input(v)``; with integrated gradients (EAP-IG,
      Hanna et al. 2024) the gradient is averaged over runs whose embeddings move from the ablated
      value to the clean one.

Usage:
    ablated = node_outputs(graph, corrupt)
    scores = edge_attribution(graph, clean, metric, ablated=ablated, ig_steps=5)   # [input, node]
    exact = all_edge_effects(graph, clean, metric, ablated=ablated)               # the same, exact

References:
    Wang et al. 2022 (IOI); Syed, Rager & Conmy 2023, "Attribution Patching Outperforms Automated
    Circuit Discovery"; Hanna, Pezzelle & Belinkov 2024 (EAP-IG); auto-circuit's
    ``prune_algos/edge_attribution_patching.py``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int

from tinylens.analysis.circuits import metric_per_variant
from tinylens.analysis.graph import ComponentGraph, NodeOutputs
from tinylens.analysis.metrics import Metric
from tinylens.errors import ConfigError


def edge_attribution(
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "batch pos"],
    metric: Metric,
    *,
    ablated: Float[torch.Tensor, "node _batch _pos d_model"],
    ig_steps: int = 0,
) -> Float[torch.Tensor, "input node"]:
    """EAP (``ig_steps=0``) or EAP-IG scores of every edge: the estimated change of the metric
    when that edge alone reads the ablated value of its node (``ablated``: a corrupted run's
    :func:`~tinylens.analysis.circuits.node_outputs` or
    :func:`~tinylens.analysis.circuits.mean_node_outputs`) instead of the clean one; 0 off the
    graph. Scores have the model's dtype.

    EAP takes the gradient at the clean run. EAP-IG averages it over ``ig_steps`` runs whose
    embedding output is ``ablated + α (clean − ablated)``, α = 1/steps … 1 (with a corrupted run
    as the ablation, Hanna et al.'s interpolation of the two prompts' embeddings).
    """
    # (``ablated``'s batch and positions are checked below, with a message that says what to pass)
    if ig_steps < 0:
        raise ConfigError(f"ig_steps must be ≥ 0, got {ig_steps}")
    with torch.no_grad():
        clean_out = graph.run(clean).outputs
    if ablated.shape[0] != clean_out.shape[0] or ablated.shape[2:] != clean_out.shape[2:]:
        raise ConfigError(
            f"the ablated outputs have shape {list(ablated.shape)}; this graph and these "
            f"prompts need [{clean_out.shape[0]}, batch or 1, {clean_out.shape[2]}, "
            f"{clean_out.shape[3]}] (same prompt length)"
        )
    diff = ablated - clean_out  # [node, batch, pos, d]
    alphas = [1.0] if ig_steps == 0 else [k / ig_steps for k in range(1, ig_steps + 1)]
    grads = torch.zeros(len(graph.inputs), *clean_out.shape[1:], dtype=clean_out.dtype)
    for alpha in alphas:
        probe = torch.zeros_like(grads, requires_grad=True)
        embed = ablated[0] + alpha * (clean_out[0] - ablated[0])
        run = graph.run(clean, embed=embed.expand_as(clean_out[0]), input_probe=probe)
        (grad,) = torch.autograd.grad(metric(run.logits), probe)
        grads += grad / len(alphas)
    scores = torch.einsum("ibpm,sbpm->is", grads, diff.expand_as(clean_out))
    return scores * graph.adjacency


def path_patching(
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "batch pos"],
    metric: Metric,
    edges: list[tuple[str, str]],
    *,
    ablated: NodeOutputs,
) -> Float[torch.Tensor, " edge"]:
    """The metric with each edge alone patched (sender → receiver input), batched.

    A receiver given as a head (``A1.2``) patches its q, k and v inputs together; ``logits`` is the
    direct path to the output. ``ablated`` holds the senders' patched outputs (a corrupted run's
    :func:`~tinylens.analysis.circuits.node_outputs`, or
    :func:`~tinylens.analysis.circuits.mean_node_outputs`). The metrics have the model's dtype.
    """
    masks = []
    for src, dst in edges:
        parts = [f"{dst}.{p}" for p in "qkv"] if dst in graph.node_index and "." in dst else [dst]
        masks.append(graph.edge_mask([(src, part) for part in parts]))
    if not masks:
        raise ConfigError("no edges to patch")
    values = metric_per_variant(graph, clean, ablated, torch.stack(masks), metric)
    return torch.tensor(values, dtype=ablated.dtype)


def all_edge_effects(
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "batch pos"],
    metric: Metric,
    *,
    ablated: NodeOutputs,
) -> Float[torch.Tensor, "input node"]:
    """Exact change of the metric when each edge alone is patched (0 off the graph): the ground
    truth that :func:`edge_attribution` estimates, at one forward row-block per edge; in the
    model's dtype."""
    with torch.no_grad():
        base = float(metric(graph.run(clean).logits))
    edges = graph.edges
    values = path_patching(graph, clean, metric, edges, ablated=ablated)
    out = torch.zeros(len(graph.inputs), len(graph.nodes), dtype=ablated.dtype)
    for (src, dst), v in zip(edges, values, strict=True):
        out[graph.input_index[dst], graph.node_index[src]] = float(v) - base
    return out
