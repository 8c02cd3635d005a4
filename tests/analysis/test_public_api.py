"""The public face of tinylens.analysis: the names the README promises, and no import side effects."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import tinylens.analysis
from tinylens.analysis import (
    ComponentGraph,
    ContrastPrompts,
    behaviour,
    edge_attribution,
    find_circuit,
    fit_probes,
    mean_node_outputs,
    patch_sweep,
)
from tinylens.model import ModelConfig, build_model


def test_every_public_name_exists_once() -> None:
    names = tinylens.analysis.__all__
    assert len(names) == len(set(names))
    assert all(hasattr(tinylens.analysis, n) for n in names)
    assert {"patch_sweep", "ComponentGraph", "edge_attribution", "fit_probes", "Metric"} <= set(names)
    assert callable(patch_sweep) and callable(edge_attribution) and callable(fit_probes)


def test_importing_it_changes_nothing() -> None:
    """No seeding, no plotting set-up, no warnings filters: importing only defines things."""
    code = (
        "import sys, warnings, torch\n"
        "state, filters = torch.random.get_rng_state(), list(warnings.filters)\n"
        "import tinylens.analysis\n"
        "assert torch.equal(state, torch.random.get_rng_state())\n"
        "assert filters == warnings.filters\n"
        "assert 'matplotlib' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr


def test_find_circuit_and_behaviour_on_contrast_prompts() -> None:
    cfg = ModelConfig(n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=12, n_ctx=8)
    model = build_model(cfg, seed=0).eval()
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, 12, (6, 5), generator=g)
    corrupt = torch.randint(0, 12, (6, 5), generator=g)
    with torch.no_grad():
        final = model(clean)[:, -1]
    prompts = ContrastPrompts(clean, corrupt, final.argmax(-1), final.argmin(-1))
    seen = behaviour(model, prompts)
    assert seen.accuracy == 1.0 and seen.logit_diff > 0 and seen.n == 6
    graph = ComponentGraph(model)
    found = find_circuit(graph, prompts, min_share=0.8, ig_steps=2)
    assert found.nodes.share >= 0.8 and found.edges.share >= 0.8
    assert set(found.node_names) == found.nodes.circuit.nodes - {"embed"}
    assert found.edges.circuit.edges <= found.nodes.circuit.edges
    sizes = [k for k, _ in found.curve]
    assert sizes == sorted(sizes) and sizes[-1] == found.n_edges_graph == len(graph.edges)
    assert found.head_patching.raw.shape == (2, 2)
    # each kept edge's score is its EAP-IG score, as ranked for the curve
    scores = edge_attribution(
        graph, clean, prompts.metric, ablated=mean_node_outputs(graph, corrupt), ig_steps=2
    )
    assert sorted(found.edge_scores) == sorted(f"{s}->{d}" for s, d in found.edges.circuit.edges)
    for edge, score in found.edge_scores.items():
        src, dst = edge.split("->")
        assert score == pytest.approx(float(scores[graph.input_index[dst], graph.node_index[src]]))
