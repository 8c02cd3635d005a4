"""Successor scores on a model whose OV circuits are built by hand."""

from __future__ import annotations

import pytest
import torch

from tinylens.analysis.graph import ComponentGraph
from tinylens.analysis.successor import successor_scores
from tinylens.errors import ConfigError
from tinylens.model import ModelConfig, build_model

N = 8


@pytest.fixture(scope="module")
def graph() -> ComponentGraph:
    """No norms, no MLP, W_E = W_U = I: head 0's OV maps token i to i + 1, head 1's to i itself."""
    cfg = ModelConfig(
        n_layers=1, n_heads=2, d_model=N, d_head=N, d_mlp=0, normalization_type=None, d_vocab=N, n_ctx=4
    )
    model = build_model(cfg, seed=0).eval()
    shift = torch.roll(torch.eye(N), 1, dims=1)  # row i has its 1 at column i + 1
    attn = model.blocks[0].attn.original_component
    with torch.no_grad():
        model.embed.original_component.weight.copy_(torch.eye(N))
        model.unembed.original_component.weight.copy_(torch.eye(N))
        attn.v.weight.copy_(torch.eye(2 * N, N))  # both heads read the embedding as it is
        attn.v.bias.zero_()
        # o.weight is [d_model, head·d_head]; head h's W_O is its block, transposed
        attn.o.weight.copy_(torch.cat([shift.T, torch.eye(N)], dim=1))
    return ComponentGraph(model)


def test_a_hand_built_successor_head_scores_one(graph) -> None:
    family = torch.arange(N)
    assert torch.allclose(graph.model.W_E, torch.eye(N))
    scores = successor_scores(graph.model, [family])
    assert scores.shape == (1, 2)
    assert float(scores[0, 0]) == 1.0  # every member's OV image ranks its successor first
    assert float(scores[0, 1]) == 0.0  # an identity OV ranks the member itself first
    # a family in reverse order: the shift head now maps each member to its predecessor
    assert float(successor_scores(graph.model, [family.flip(0)])[0, 0]) == 0.0


def test_families_need_two_members(graph) -> None:
    with pytest.raises(ConfigError, match="at least two members"):
        successor_scores(graph.model, [torch.tensor([3])])
