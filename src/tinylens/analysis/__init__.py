"""Interpretability methods for any TransformerLens model: tinylens's public analysis API.

Every method takes a model (or a :class:`ComponentGraph` built from one), token tensors and
options, and returns plain tensors or frozen dataclasses; none reads files or knows which study
called it. Hook-based methods run on any model with TransformerLens hooks
(:class:`HookedModel`); the graph, circuit, fast-patching and successor methods recompute the
forward pass from the weights (:class:`WeightForward`) and refuse, with a message naming the
feature, a model they do not reproduce.

Usage:
    from tinylens.analysis import ComponentGraph, edge_attribution, logit_diff, patch_sweep
    sweep = patch_sweep(model, clean, corrupt, logit_diff(answer, contrast), site="head")
    graph = ComponentGraph(model)
    scores = edge_attribution(graph, clean, metric, ablated=node_outputs(graph, corrupt))
"""

from __future__ import annotations

from tinylens.analysis.ablation import Ablation, AblationKind, run_ablated
from tinylens.analysis.attention import attention_mass, mean_attention
from tinylens.analysis.attribution import all_edge_effects, edge_attribution, path_patching
from tinylens.analysis.circuits import (
    Circuit,
    CircuitScore,
    circuit_mask,
    faithfulness,
    faithfulness_curve,
    mean_node_outputs,
    node_circuit,
    node_outputs,
    overlap,
    top_edges,
)
from tinylens.analysis.contrast import Behaviour, ContrastPrompts, behaviour
from tinylens.analysis.curves import Phase, locate_phase, moving_mean_log, smooth_log
from tinylens.analysis.forward import ForwardRun, WeightForward
from tinylens.analysis.geometry import EmbeddingGeometry, embedding_geometry, rank_correlation
from tinylens.analysis.graph import ComponentGraph, GraphRun, Input, Node, NodeOutputs
from tinylens.analysis.heads import Head, ablate_heads, allowed_rate, rank_heads
from tinylens.analysis.inversion import (
    EPSILON,
    SETTINGS,
    Completeness,
    DecoderBatch,
    InversionSamples,
    ProbeSite,
    Sampler,
    all_sites,
    completeness,
    decoder_batch,
    in_preimage,
    invert,
    null_activations,
    parse_site,
    preimage_distance,
    site_activations,
)
from tinylens.analysis.inversion_scores import (
    HypothesisScore,
    hypothesis_score,
    likelihood_shift,
    token_log_likelihoods,
)
from tinylens.analysis.metrics import (
    FinalTokenMetric,
    Metric,
    answer_probability,
    kl_divergence,
    logit_diff,
)
from tinylens.analysis.patching import (
    Direction,
    Method,
    PatchingResult,
    Site,
    Source,
    patch_heads,
    patch_sweep,
)
from tinylens.analysis.probes import (
    ProbeResult,
    fit_probes,
    residual_at,
    residual_names,
    shuffled_labels,
)
from tinylens.analysis.protocol import HookedModel, WeightedModel, check_token_ids
from tinylens.analysis.pruning import Pruned, prune_edges, prune_nodes
from tinylens.analysis.regions import (
    RegionCurves,
    RegionSlice,
    boundary_sharpness,
    default_read_hook,
    interpolate,
    interpolation_path,
    normalise,
    plane_slice,
    random_directions,
    sign_flips,
)
from tinylens.analysis.search import FoundCircuit, find_circuit
from tinylens.analysis.successor import effective_embedding, successor_scores

__all__ = [
    # the model surface analyses read
    "HookedModel",
    "WeightedModel",
    "check_token_ids",
    # metrics: logits → the number an intervention is scored by
    "Metric",
    "FinalTokenMetric",
    "logit_diff",
    "answer_probability",
    "kl_divergence",
    # the behaviour under study: clean and corrupted prompts with answers
    "ContrastPrompts",
    "Behaviour",
    "behaviour",
    # activation patching (hooks, with a fast path)
    "patch_sweep",
    "patch_heads",
    "PatchingResult",
    "Site",
    "Direction",
    "Source",
    "Method",
    # ablation of hooked components, and heads ranked by a score
    "Ablation",
    "AblationKind",
    "run_ablated",
    "Head",
    "rank_heads",
    "ablate_heads",
    "allowed_rate",
    # attention patterns
    "mean_attention",
    "attention_mass",
    # linear probes
    "fit_probes",
    "ProbeResult",
    "residual_at",
    "residual_names",
    "shuffled_labels",
    # the forward pass from weights, and the component graph built on it
    "WeightForward",
    "ForwardRun",
    "ComponentGraph",
    "GraphRun",
    "Node",
    "Input",
    "NodeOutputs",
    # circuits: edge sets, their ablated values, run alone and scored
    "Circuit",
    "CircuitScore",
    "node_circuit",
    "circuit_mask",
    "node_outputs",
    "mean_node_outputs",
    "faithfulness",
    "faithfulness_curve",
    "top_edges",
    "overlap",
    # edge effects: path patching and edge attribution patching
    "path_patching",
    "all_edge_effects",
    "edge_attribution",
    # iterative pruning and the whole circuit search
    "Pruned",
    "prune_nodes",
    "prune_edges",
    "FoundCircuit",
    "find_circuit",
    # successor heads
    "successor_scores",
    "effective_embedding",
    # embedding geometry
    "EmbeddingGeometry",
    "embedding_geometry",
    "rank_correlation",
    # training curves
    "Phase",
    "locate_phase",
    "moving_mean_log",
    "smooth_log",
    # InversionView: what inputs share an activation
    "ProbeSite",
    "parse_site",
    "all_sites",
    "site_activations",
    "preimage_distance",
    "in_preimage",
    "EPSILON",
    "completeness",
    "Completeness",
    "decoder_batch",
    "DecoderBatch",
    "invert",
    "null_activations",
    "likelihood_shift",
    "token_log_likelihoods",
    "hypothesis_score",
    "HypothesisScore",
    "InversionSamples",
    "Sampler",
    "SETTINGS",
    # stable regions: interpolation between prompt pairs' activations
    "interpolate",
    "RegionCurves",
    "boundary_sharpness",
    "normalise",
    "plane_slice",
    "RegionSlice",
    "interpolation_path",
    "default_read_hook",
    "sign_flips",
    "random_directions",
]
