"""The component graph's forward pass and edge patches against the model's own hooks."""

from __future__ import annotations

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from tinylens import hooks
from tinylens.analysis.graph import ComponentGraph
from tinylens.errors import ConfigError, TokenError
from tinylens.model import ModelConfig, build_model, load_pretrained

D_VOCAB = 30
SHAPES = {
    "ln": {},
    "rms": {"normalization_type": "RMS"},
    "no-norm": {"normalization_type": None},
    "attn-only": {"d_mlp": 0},
    "rotary": {"positional_embedding": "rotary"},
    "gelu-3-layers": {"act_fn": "gelu", "n_layers": 3},
}


def randomise_norms(model):
    """Move every norm weight and bias away from its initial 1 / 0, so that tests exercise them."""
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name or "norm" in name:
                param.add_(0.3 * torch.randn(param.shape, generator=g))
    return model


def native(**overrides: object):
    base = {"n_layers": 2, "n_heads": 3, "d_model": 24, "d_head": 8, "d_mlp": 48}
    cfg = ModelConfig(**{**base, **overrides}, d_vocab=D_VOCAB, n_ctx=16)  # type: ignore[arg-type]
    return randomise_norms(build_model(cfg, seed=1).eval())


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("gpt2")
    torch.manual_seed(0)
    config = GPT2Config(n_layer=2, n_head=4, n_embd=32, vocab_size=D_VOCAB, n_positions=32)
    GPT2LMHeadModel(config).save_pretrained(folder)
    return randomise_norms(load_pretrained(folder))


@pytest.fixture(scope="module")
def tokens() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, D_VOCAB, (4, 11), generator=g)
    return {"clean": clean, "corrupt": torch.randint(0, D_VOCAB, (4, 11), generator=g)}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_graph_forward_equals_the_model(shape, tokens) -> None:
    model = native(**SHAPES[shape])
    with torch.no_grad():
        torch.testing.assert_close(
            ComponentGraph(model).run(tokens["clean"]).logits, model(tokens["clean"]), atol=1e-5, rtol=0
        )


def test_graph_forward_equals_a_gpt2_checkpoint(gpt2, tokens) -> None:
    graph = ComponentGraph(gpt2)
    assert len(graph.nodes) == 1 + 2 * (4 + 1)
    with torch.no_grad():
        torch.testing.assert_close(
            graph.run(tokens["clean"]).logits, gpt2(tokens["clean"]), atol=1e-5, rtol=0
        )


def test_a_model_it_cannot_reproduce_is_refused(tmp_path) -> None:
    """GPT-2 with attention scaled by the inverse layer index computes something else; the graph
    notices on construction instead of returning wrong numbers."""
    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, vocab_size=D_VOCAB, n_positions=32,
        scale_attn_by_inverse_layer_idx=True,
    )  # fmt: skip
    GPT2LMHeadModel(config).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match="do not reproduce this model"):
        ComponentGraph(load_pretrained(tmp_path))


def test_structure_counts_and_direct_paths() -> None:
    graph = ComponentGraph(native())
    assert [n.name for n in graph.nodes] == [
        "embed", "A0.0", "A0.1", "A0.2", "M0", "A1.0", "A1.1", "A1.2", "M1"
    ]  # fmt: skip
    edges = set(graph.edges)
    assert ("A0.1", "M0") in edges  # an MLP reads its own layer's heads
    assert ("A0.1", "A0.2.q") not in edges  # heads of one layer do not read each other
    assert ("M0", "A1.0.v") in edges and ("M1", "logits") in edges
    assert ("A1.0", "M0") not in edges
    # embed → 3 heads × 3 inputs × 2 layers + 2 MLPs + logits; and so on
    assert len(edges) == int(graph.adjacency.sum())


def test_patching_every_edge_out_of_a_head_equals_patching_the_head(tokens) -> None:
    model = native()
    graph = ComponentGraph(model)
    with torch.no_grad():
        corrupt = graph.run(tokens["corrupt"]).outputs
        _, cache = model.run_with_cache(tokens["corrupt"])
        for layer, head in [(0, 1), (1, 2)]:
            name = f"A{layer}.{head}"
            mask = graph.edge_mask([e for e in graph.edges if e[0] == name])
            ours = graph.run(tokens["clean"], patch=corrupt, mask=mask).logits

            def swap_head(z, *, hook, head=head, layer=layer):
                z = z.clone()
                z[:, :, head] = cache[hooks.attn_z(layer)][:, :, head]
                return z

            reference = model.run_with_hooks(
                tokens["clean"], fwd_hooks=[(hooks.attn_z(layer), swap_head)]
            )
            torch.testing.assert_close(ours, reference, atol=1e-5, rtol=0)


def test_an_edge_to_the_logits_is_a_direct_path_patch(tokens) -> None:
    model = native()
    graph = ComponentGraph(model)
    with torch.no_grad():
        clean, corrupt = graph.run(tokens["clean"]), graph.run(tokens["corrupt"])
        sender = graph.node_index["A0.2"]
        ours = graph.run(
            tokens["clean"], patch=corrupt.outputs, mask=graph.edge_mask([("A0.2", "logits")])
        )
        delta = corrupt.outputs[sender] - clean.outputs[sender]
        # the last block's output feeds only the unembedding: add the sender's change there alone
        reference = model.run_with_hooks(
            tokens["clean"], fwd_hooks=[(hooks.resid_post(1), lambda r, *, hook: r + delta)]
        )
        torch.testing.assert_close(ours.logits, reference, atol=1e-5, rtol=0)


def test_a_query_edge_changes_only_that_heads_query(tokens) -> None:
    """Path patching A0.0 → A1.2's query equals recomputing A1.2's query by hand from a
    residual stream where A0.0's output is the corrupted one, keys and values untouched."""
    model = native()
    graph = ComponentGraph(model)
    block = model.blocks[1]
    with torch.no_grad():
        clean, corrupt = graph.run(tokens["clean"]), graph.run(tokens["corrupt"])
        s = graph.node_index["A0.0"]
        ours = graph.run(
            tokens["clean"], patch=corrupt.outputs, mask=graph.edge_mask([("A0.0", "A1.2.q")])
        )
        _, cache = model.run_with_cache(tokens["clean"])
        resid = cache[hooks.resid_pre(1)] + corrupt.outputs[s] - clean.outputs[s]
        q_head = block.ln1.original_component(resid) @ model.W_Q[1, 2] + model.b_Q[1, 2]

        def swap_query(q, *, hook):
            q = q.clone()
            q[:, :, 2] = q_head
            return q

        reference = model.run_with_hooks(tokens["clean"], fwd_hooks=[(hooks.attn_q(1), swap_query)])
        torch.testing.assert_close(ours.logits, reference, atol=1e-5, rtol=0)


def test_a_variant_axis_equals_separate_runs(tokens) -> None:
    graph = ComponentGraph(native())
    with torch.no_grad():
        corrupt = graph.run(tokens["corrupt"]).outputs
        masks = torch.stack(
            [
                graph.edge_mask([("embed", "A1.0.k")]),
                graph.edge_mask([("M0", "logits"), ("A0.1", "M1")], value=0.5),
            ]
        )
        both = graph.run(tokens["clean"], patch=corrupt, mask=masks).logits
        for v in range(2):
            alone = graph.run(tokens["clean"], patch=corrupt, mask=masks[v]).logits
            torch.testing.assert_close(both[v * 4 : (v + 1) * 4], alone, atol=1e-5, rtol=0)


def test_bad_names_and_tokens_get_clear_errors() -> None:
    graph = ComponentGraph(native())
    with pytest.raises(ConfigError, match="unknown node"):
        graph.edge_mask([("A9.0", "logits")])
    with pytest.raises(ConfigError, match="unknown input"):
        graph.edge_mask([("A0.0", "A1.0")])
    with pytest.raises(ConfigError, match="no direct path"):
        graph.edge_mask([("A1.0", "A0.0.q")])
    with pytest.raises(TokenError, match="outside the vocabulary"):
        graph.run(torch.full((1, 3), D_VOCAB))
    with pytest.raises(ConfigError, match="patch="):
        graph.run(torch.zeros(1, 3, dtype=torch.long), mask=graph.zero_mask())
