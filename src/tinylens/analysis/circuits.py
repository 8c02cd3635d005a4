"""Circuits: which edges of the component graph carry a behaviour, found and checked.

Background:
    A circuit is a set of edges of :class:`~tinylens.analysis.graph.ComponentGraph`. Running "only
    the circuit" means every other edge reads an ablated value instead of its node's real output:
    the node's output on a corrupted prompt, or its mean over reference prompts. The circuit's
    *share* is the metric it keeps, ``m(circuit) / m(full model)`` (the paper's "% of the logit
    difference"); *normalised* also subtracts what is left with every edge ablated.

    - Path patching (Wang et al. 2022): the effect of one edge, sender → receiver's q/k/v or the
      logits, patched from the corrupted run with everything else clean.
    - Edge attribution patching (EAP, Syed et al. 2023): a first-order estimate of every edge's
      path-patching effect from one forward and one backward pass,
      ``(out_corrupt(u) − out_clean(u)) · ∂metric/∂input(v)``; with integrated gradients (EAP-IG,
      Hanna et al. 2024) the gradient is averaged over runs whose embeddings move from the corrupted
      prompt to the clean one.
    - Iterative pruning (Lan & Barez 2023): ablate each component in turn, from the last layer back
      to the first and then forward again, and drop it for good when the circuit still keeps 80% of
      the full model's metric without it; then the same over edges.

Usage:
    graph = ComponentGraph(model)
    ablation = corrupt_ablation(graph, corrupt)      # or mean_ablation(graph, reference)
    scores = edge_attribution(graph, clean, metric, ablation=ablation, ig_steps=5)
    circuit = top_edges(graph, scores, 50)
    faithfulness(graph, circuit, clean, ablation=ablation, metric=metric)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int

from tinylens.analysis.graph import ComponentGraph
from tinylens.errors import ConfigError

Metric = Callable[[Float[torch.Tensor, "batch pos d_vocab"]], torch.Tensor]
"""Logits of a batch → one number (0-d tensor), e.g. :func:`~tinylens.analysis.patching.logit_diff`."""

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
    return Circuit(frozenset((s, d) for s, d in graph.edges if _owner(d) in keep and s in keep))


def circuit_mask(graph: ComponentGraph, circuit: Circuit) -> torch.Tensor:
    """The ``[input, node]`` ablation mask of a circuit: 1 on every edge outside it."""
    inside = graph.edge_mask(sorted(circuit.edges)) if circuit.edges else graph.zero_mask()
    return graph.adjacency.float() - inside


def mean_ablation(
    graph: ComponentGraph, reference: Int[torch.Tensor, "ref pos"]
) -> Float[torch.Tensor, "node 1 pos d_model"]:
    """Every node's output averaged over reference prompts, per position (the ablated value)."""
    with torch.no_grad():
        return graph.run(reference).outputs.mean(1, keepdim=True)


def corrupt_ablation(
    graph: ComponentGraph, corrupt: Int[torch.Tensor, "batch pos"]
) -> Float[torch.Tensor, "node batch pos d_model"]:
    """Every node's output on the corrupted prompts (ablated value for prompt i is corrupt i's)."""
    with torch.no_grad():
        return graph.run(corrupt).outputs


def faithfulness(
    graph: ComponentGraph,
    circuit: Circuit,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablation: torch.Tensor,
    metric: Metric,
) -> CircuitScore:
    """Run the circuit alone (every other edge ablated) and score it against the full model."""
    if not circuit.edges:
        raise ConfigError("the circuit is empty: it has no edges to run")
    masks = torch.stack([graph.zero_mask(), circuit_mask(graph, circuit), graph.adjacency.float()])
    full, inside, empty = _metric_per_variant(graph, tokens, ablation, masks, metric)
    return CircuitScore(circuit=inside, full=full, empty=empty)


def faithfulness_curve(
    graph: ComponentGraph,
    scores: Float[torch.Tensor, "input node"],
    sizes: Iterable[int],
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablation: torch.Tensor,
    metric: Metric,
) -> list[tuple[int, CircuitScore]]:
    """Faithfulness of the top-k edges by |score| for each k in ``sizes`` (batched forwards)."""
    sizes = sorted(set(sizes))
    circuits = [top_edges(graph, scores, k) for k in sizes]
    masks = [graph.zero_mask(), graph.adjacency.float()]
    masks += [circuit_mask(graph, c) for c in circuits]
    values = _metric_per_variant(graph, tokens, ablation, torch.stack(masks), metric)
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


def edge_attribution(
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "batch pos"],
    metric: Metric,
    *,
    ablation: torch.Tensor,
    ig_steps: int = 0,
) -> Float[torch.Tensor, "input node"]:
    """EAP (``ig_steps=0``) or EAP-IG scores of every edge: the estimated change of the metric
    when that edge alone reads the ablated value of its node (``ablation``: a corrupted run's
    :func:`corrupt_ablation` or :func:`mean_ablation`) instead of the clean one; 0 off the graph.

    EAP takes the gradient at the clean run. EAP-IG averages it over ``ig_steps`` runs whose
    embedding output is ``ablated + α (clean − ablated)``, α = 1/steps … 1 (with a corrupted run
    as the ablation, Hanna et al.'s interpolation of the two prompts' embeddings).
    """
    if ig_steps < 0:
        raise ConfigError(f"ig_steps must be ≥ 0, got {ig_steps}")
    with torch.no_grad():
        clean_out = graph.run(clean).outputs
    if ablation.shape[0] != clean_out.shape[0] or ablation.shape[2:] != clean_out.shape[2:]:
        raise ConfigError(
            f"the ablation holds outputs of shape {list(ablation.shape)}; this graph and these "
            f"prompts need [{clean_out.shape[0]}, batch or 1, {clean_out.shape[2]}, "
            f"{clean_out.shape[3]}] (same prompt length)"
        )
    diff = ablation - clean_out  # [node, batch, pos, d]
    alphas = [1.0] if ig_steps == 0 else [k / ig_steps for k in range(1, ig_steps + 1)]
    grads = torch.zeros(len(graph.inputs), *clean_out.shape[1:])
    for alpha in alphas:
        probe = torch.zeros_like(grads, requires_grad=True)
        embed = ablation[0] + alpha * (clean_out[0] - ablation[0])
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
    ablation: torch.Tensor,
) -> Float[torch.Tensor, " edge"]:
    """The metric with each edge alone patched (sender → receiver input), batched.

    A receiver given as a head (``A1.2``) patches its q, k and v inputs together; ``logits`` is the
    direct path to the output. ``ablation`` holds the senders' patched outputs (a corrupted run's
    :func:`corrupt_ablation`, or :func:`mean_ablation`).
    """
    masks = []
    for src, dst in edges:
        parts = [f"{dst}.{p}" for p in "qkv"] if dst in graph.node_index and "." in dst else [dst]
        masks.append(graph.edge_mask([(src, part) for part in parts]))
    if not masks:
        raise ConfigError("no edges to patch")
    return torch.tensor(_metric_per_variant(graph, clean, ablation, torch.stack(masks), metric))


def all_edge_effects(
    graph: ComponentGraph,
    clean: Int[torch.Tensor, "batch pos"],
    metric: Metric,
    *,
    ablation: torch.Tensor,
) -> Float[torch.Tensor, "input node"]:
    """Exact change of the metric when each edge alone is patched (0 off the graph): the ground
    truth that :func:`edge_attribution` estimates, at one forward row-block per edge."""
    with torch.no_grad():
        base = float(metric(graph.run(clean).logits))
    edges = graph.edges
    values = path_patching(graph, clean, metric, edges, ablation=ablation)
    out = torch.zeros(len(graph.inputs), len(graph.nodes))
    for (src, dst), v in zip(edges, values, strict=True):
        out[graph.input_index[dst], graph.node_index[src]] = float(v) - base
    return out


@dataclass(frozen=True)
class Pruned:
    """What iterative pruning kept, what it dropped (in order) and the share the result keeps."""

    circuit: Circuit
    dropped: tuple[str, ...]
    share: float
    """The kept circuit's metric as a share of the full model's, as measured; ≥ ``min_share``
    unless the circuit handed to :func:`prune_edges` was already below it (then nothing is dropped)."""


def prune_nodes(
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    ablation: torch.Tensor,
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
        value = _metric_per_variant(
            graph, tokens, ablation, circuit_mask(graph, trial).unsqueeze(0), metric
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
    ablation: torch.Tensor,
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
    share = _metric_per_variant(graph, tokens, ablation, mask, metric)[0] / full
    dropped: list[str] = []
    by_receiver = sorted(edges, key=lambda e: (-graph.input_index[e[1]], graph.node_index[e[0]]))
    for edge in by_receiver:
        if len(edges) == 1:
            break
        mask = circuit_mask(graph, Circuit(frozenset(edges - {edge}))).unsqueeze(0)
        value = _metric_per_variant(graph, tokens, ablation, mask, metric)[0] / full
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


def _owner(input_name: str) -> str:
    """The node an input belongs to: ``A1.2.q`` → ``A1.2``; ``M0`` → ``M0``; ``logits``."""
    return input_name.rsplit(".", 1)[0] if input_name.count(".") == 2 else input_name


def _metric_per_variant(
    graph: ComponentGraph,
    tokens: Int[torch.Tensor, "batch pos"],
    ablation: torch.Tensor,
    masks: Float[torch.Tensor, "variant input node"],
    metric: Metric,
) -> list[float]:
    """The metric of one masked run per variant, in chunks of one forward pass each."""
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
            logits = graph.run(tokens, patch=ablation, mask=part).logits
            logits = logits.view(len(part), batch, *logits.shape[1:])
            out.extend(float(metric(logits[v])) for v in range(len(part)))
    return out
