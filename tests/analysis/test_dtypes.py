"""Float64 models: every graph method runs in the model's dtype and agrees with the float32 run."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.model_bridge.sources.native import boot as boot_native

from tinylens.analysis import (
    ComponentGraph,
    all_edge_effects,
    answer_probability,
    edge_attribution,
    kl_divergence,
    logit_diff,
    node_outputs,
    patch_sweep,
    path_patching,
)

D_VOCAB = 19


def _model(dtype: torch.dtype):
    cfg = TransformerBridgeConfig(
        n_layers=2, n_heads=2, d_model=16, d_head=8, d_mlp=32, d_vocab=D_VOCAB, n_ctx=8,
        act_fn="gelu", seed=2,
    )  # fmt: skip
    return boot_native(cfg, dtype=dtype).eval()


@pytest.fixture(scope="module")
def runs() -> dict[torch.dtype, dict[str, object]]:
    g = torch.Generator().manual_seed(1)
    clean = torch.randint(0, D_VOCAB, (4, 6), generator=g)
    corrupt = torch.randint(0, D_VOCAB, (4, 6), generator=g)
    out: dict[torch.dtype, dict[str, object]] = {}
    for dtype in (torch.float32, torch.float64):
        model = _model(dtype)
        with torch.no_grad():
            final = model(clean)[:, -1]
        metric = logit_diff(final.argmax(-1), final.argmin(-1))
        graph = ComponentGraph(model)
        ablated = node_outputs(graph, corrupt)
        edges = graph.edges[:5]
        out[dtype] = {
            "eap": edge_attribution(graph, clean, metric, ablated=ablated),
            "eap_ig": edge_attribution(graph, clean, metric, ablated=ablated, ig_steps=2),
            "effects": all_edge_effects(graph, clean, metric, ablated=ablated),
            "paths": path_patching(graph, clean, metric, edges, ablated=ablated),
            "sweep_fast": patch_sweep(model, clean, corrupt, metric, site="head", method="fast").raw,
            "sweep_hooks": patch_sweep(model, clean, corrupt, metric, method="hooks").raw,
        }
    return out


@pytest.mark.parametrize("name", ["eap", "eap_ig", "effects", "paths", "sweep_fast", "sweep_hooks"])
def test_float64_results_keep_the_dtype_and_match_float32(runs, name) -> None:
    wide, narrow = runs[torch.float64][name], runs[torch.float32][name]
    assert wide.dtype == torch.float64
    assert narrow.dtype == torch.float32
    torch.testing.assert_close(wide.float(), narrow, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_probability_metrics_keep_float64_and_upcast_half(dtype: torch.dtype) -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, D_VOCAB, generator=g, dtype=torch.float64)
    answer = torch.tensor([1, 2, 3])
    expected = torch.promote_types(dtype, torch.float32)
    prob = answer_probability(answer)(logits.to(dtype))
    kl = kl_divergence(logits.to(dtype))(logits.to(dtype) + 0.5 * torch.randn_like(logits).to(dtype))
    assert prob.dtype == kl.dtype == expected
    reference = logits[:, -1].softmax(-1)[torch.arange(3), answer].mean()
    torch.testing.assert_close(
        prob.double(), reference, atol=1e-2 if dtype == torch.bfloat16 else 1e-6, rtol=0
    )
