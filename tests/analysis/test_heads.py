"""Head scores and ablations: attention mass against the cache, ranking, and the ablation plumbing."""

from __future__ import annotations

import pytest
import torch

from tinylens import hooks
from tinylens.analysis.ablation import Ablation, run_ablated
from tinylens.analysis.attention import attention_mass
from tinylens.analysis.heads import ablate_heads, allowed_rate, rank_heads
from tinylens.errors import ConfigError
from tinylens.model import build_model

from ..helpers import model_cfg


@pytest.fixture
def model():
    return build_model(model_cfg(n_layers=2, n_heads=3), seed=2).eval()


@pytest.fixture
def tokens() -> torch.Tensor:
    return torch.randint(0, 12, (6, 18), generator=torch.Generator().manual_seed(1))


def random_masks(seed: int):
    gen = torch.Generator().manual_seed(seed)
    query = torch.rand(6, 18, generator=gen) < 0.5
    keys = torch.rand(6, 18, 18, generator=gen) < 0.3
    return query, keys


def test_attention_mass_equals_a_loop_over_the_cache(model, tokens) -> None:
    query, keys = random_masks(0)
    got = attention_mass(model, tokens, query, {"k": keys}, batch_size=4)["k"]
    got_per_key = attention_mass(model, tokens, query, {"k": keys}, per_key=True)["k"]
    _, cache = model.run_with_cache(tokens)
    for layer in range(2):
        pattern = cache[hooks.attn_pattern(layer)]  # [batch, head, q, k]
        for head in range(3):
            total, per_key, n, n_nonempty = 0.0, 0.0, 0, 0
            for b in range(6):
                for q in range(18):
                    if not query[b, q]:
                        continue
                    mass = float(pattern[b, head, q][keys[b, q]].sum())
                    total, n = total + mass, n + 1
                    if keys[b, q].any():
                        per_key += mass / int(keys[b, q].sum())
                        n_nonempty += 1
            assert float(got[layer, head]) == pytest.approx(total / n, abs=1e-6)
            assert float(got_per_key[layer, head]) == pytest.approx(per_key / n_nonempty, abs=1e-6)


def test_all_keys_get_all_the_mass(model, tokens) -> None:
    query = torch.ones(6, 18, dtype=torch.bool)
    causal = torch.ones(18, 18).tril().bool().expand(6, 18, 18)
    mass = attention_mass(model, tokens, query, {"all": causal})["all"]
    torch.testing.assert_close(mass, torch.ones(2, 3))


def test_attention_mass_needs_queries(model, tokens) -> None:
    _, keys = random_masks(0)
    with pytest.raises(ConfigError, match="no query position"):
        attention_mass(model, tokens, torch.zeros(6, 18, dtype=torch.bool), {"k": keys})


def test_rank_heads_orders_by_score_then_index() -> None:
    score = torch.tensor([[0.1, 0.5], [0.5, -1.0]])
    assert rank_heads(score) == [(0, 1), (1, 0), (0, 0), (1, 1)]


def test_ablate_heads_is_run_ablated_on_hook_z(model, tokens) -> None:
    torch.testing.assert_close(ablate_heads(model, tokens, []), model(tokens))
    expected = run_ablated(
        model,
        tokens,
        [Ablation(hooks.attn_z(1), head=2, kind="mean"), Ablation(hooks.attn_z(0), head=0, kind="mean")],
    )
    torch.testing.assert_close(ablate_heads(model, tokens, [(1, 2), (0, 0)]), expected)


def test_allowed_rate_counts_top_predictions_in_the_allowed_set() -> None:
    logits = torch.zeros(1, 3, 4)
    logits[0, 0, 2] = logits[0, 1, 1] = logits[0, 2, 3] = 1.0  # argmax 2, 1, 3
    allowed = torch.zeros(1, 3, 4, dtype=torch.bool)
    allowed[0, 0, 2] = allowed[0, 1, 0] = allowed[0, 2, 3] = True
    query = torch.tensor([[True, True, False]])
    assert allowed_rate(logits, query, allowed) == 0.5
    with pytest.raises(ConfigError):
        allowed_rate(logits, torch.zeros(1, 3, dtype=torch.bool), allowed)
