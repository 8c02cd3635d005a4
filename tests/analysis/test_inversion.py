"""InversionView's distance, min-over-positions rule, sites and completeness, against brute force."""

from __future__ import annotations

import math

import pytest
import torch
from transformer_lens.model_bridge.sources.native import boot as boot_native

from tinylens.analysis.inversion import (
    all_sites,
    completeness,
    decoder_batch,
    distance,
    in_preimage,
    invert,
    null_activations,
    parse_site,
    preimage_distance,
    site_activations,
)
from tinylens.errors import ConfigError, UnknownNameError
from tinylens.tasks import AdditionTask

from ..helpers import native_cfg

TASK = AdditionTask(n_digits=1)  # 100 questions: small enough to enumerate


def _model(**overrides: object):
    cfg = native_cfg(TASK.d_vocab, **{"n_layers": 2, "n_heads": 4, **overrides})
    model = boot_native(cfg, dtype=torch.float64).eval()
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.3 * torch.randn(param.shape, generator=g).to(param.dtype))
    return model


def _every_question() -> torch.Tensor:
    a, b = torch.meshgrid(torch.arange(10), torch.arange(10), indexing="ij")
    prompts = torch.stack([a.flatten(), torch.full((100,), 10), b.flatten(), torch.full((100,), 11)], 1)
    return TASK.solve(prompts)  # [100, 6]: every 'a+b=ss'


def test_sites_are_named_and_checked() -> None:
    model = _model()
    names = [s.name for s in all_sites(model)]
    assert names[0] == "embed" and len(names) == 1 + 2 * (4 + 4)
    assert names[1:9] == [
        *(f"L0.head{h}" for h in range(4)),
        "L0.attn_out",
        "L0.resid_mid",
        "L0.mlp_out",
        "L0.resid_post",
    ]
    head = parse_site("L1.head3", model)
    assert (head.hook, head.layer, head.head) == ("blocks.1.attn.hook_z", 1, 3)
    for bad, message in (
        ("L2.resid_post", "layers 0–1"),
        ("L0.head4", "heads 0–3"),
        ("L0.mlp", "not a site"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_site(bad, model)
    attn_only = _model(attn_only=True)
    assert not any(s.name.endswith("mlp_out") for s in all_sites(attn_only))
    with pytest.raises(ConfigError, match=r"no blocks\.0\.hook_mlp_out"):
        parse_site("L0.mlp_out", attn_only)


def test_head_sites_add_up_to_the_attention_output() -> None:
    model = _model()
    tokens = _every_question()[:20]
    heads = sum(site_activations(model, tokens, parse_site(f"L1.head{h}", model)) for h in range(4))
    attn_out = site_activations(model, tokens, parse_site("L1.attn_out", model))
    torch.testing.assert_close(heads + model.b_O[1], attn_out)
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(
        site_activations(model, tokens, parse_site("L0.resid_post", model), batch_size=7),
        cache["blocks.0.hook_resid_post"],
    )


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_preimage_distance_is_the_minimum_over_positions(metric) -> None:
    g = torch.Generator().manual_seed(0)
    acts = torch.randn(9, 5, 7, generator=g, dtype=torch.float64)
    query = torch.randn(7, generator=g, dtype=torch.float64)
    mask = torch.rand(9, 5, generator=g) > 0.4
    mask[0] = False  # a candidate with no allowed position
    got = preimage_distance(acts, query, metric=metric)
    got_masked = preimage_distance(acts, query, metric=metric, positions=mask)
    for c in range(9):
        per_pos = []
        for p in range(5):
            z = acts[c, p]
            if metric == "l2":
                d = math.sqrt(sum((float(z[i]) - float(query[i])) ** 2 for i in range(7)))
                d /= math.sqrt(sum(float(q) ** 2 for q in query))
            else:
                dot = sum(float(z[i]) * float(query[i]) for i in range(7))
                d = 1 - dot / (
                    math.sqrt(sum(float(v) ** 2 for v in z))
                    * math.sqrt(sum(float(q) ** 2 for q in query))
                )
            per_pos.append(d)
        assert float(got[c]) == pytest.approx(min(per_pos), rel=1e-9)
        allowed = [d for d, keep in zip(per_pos, mask[c].tolist(), strict=True) if keep]
        assert float(got_masked[c]) == pytest.approx(min(allowed) if allowed else math.inf, rel=1e-9)
    assert float(distance(query, query, metric)) == pytest.approx(0.0, abs=1e-12)


def test_completeness_on_an_enumerated_input_space_matches_brute_force() -> None:
    model = _model()
    every = _every_question()
    site = parse_site("L0.resid_post", model)
    acts = site_activations(model, every, site)
    query = acts[37, 2]  # '3+7=10' at the second operand
    true = preimage_distance(acts, query)
    assert float(true[37]) == 0.0  # the query's own input is at distance 0
    ordered = true.unique()  # ascending, ties merged
    epsilon = float(ordered[5] + ordered[6]) / 2  # a preimage of the 6 nearest distances
    inside = {i for i in range(100) if float(true[i]) < epsilon}
    brute = {
        i
        for i in range(100)
        if min(float((acts[i, p] - query).norm() / query.norm()) for p in range(every.shape[1]))
        < epsilon
    }
    assert inside == brute and 6 <= len(inside) < 100
    sampled = torch.tensor([37, 37, 5, 90, *sorted(inside)[:4]])
    got = completeness(true, sampled, epsilon)
    distinct = set(sampled.tolist())
    assert got.n_samples == len(distinct) and got.preimage_size == len(inside)
    assert got.recall == pytest.approx(len(distinct & inside) / len(inside))
    assert got.precision == pytest.approx(len(distinct & inside) / len(distinct))
    assert torch.equal(in_preimage(true, epsilon), torch.tensor([i in inside for i in range(100)]))
    empty = completeness(true, torch.tensor([], dtype=torch.int64), epsilon)
    assert empty.n_samples == 0 and math.isnan(empty.precision) and empty.recall == 0.0


def test_bad_input_is_refused() -> None:
    query = torch.ones(4, dtype=torch.float64)
    acts = torch.zeros(2, 3, 4, dtype=torch.float64)
    for eps in (0, -0.1, math.nan, math.inf, True):
        with pytest.raises(ConfigError, match="ε must be a number > 0"):
            in_preimage(torch.zeros(3), eps)
    with pytest.raises(UnknownNameError, match="valid choices: l2, cosine"):
        preimage_distance(acts, query, metric="l1")
    with pytest.raises(ConfigError, match="all zeros"):
        preimage_distance(acts, torch.zeros(4, dtype=torch.float64))
    with pytest.raises(ConfigError, match="positions has shape"):
        preimage_distance(acts, query, positions=torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ConfigError, match="sample indices"):
        completeness(torch.zeros(5), torch.tensor([5]))


def test_decoder_batches_hold_the_activation_at_the_drawn_site_and_position() -> None:
    model = _model()
    tokens = _every_question()
    sites = [parse_site(n, model) for n in ("embed", "L0.head2", "L1.resid_post")]
    allowed = torch.zeros_like(tokens, dtype=torch.bool)
    allowed[:, [0, 2]] = True  # the operands only
    batch = decoder_batch(model, tokens, sites, torch.Generator().manual_seed(0), positions=allowed)
    assert set(batch.positions.tolist()) == {0, 2} and set(batch.sites.tolist()) == {0, 1, 2}
    for i in range(0, 100, 7):  # brute force: the activation the model gives at that site and place
        site = sites[int(batch.sites[i])]
        expected = site_activations(model, tokens[i : i + 1], site)[0, int(batch.positions[i])]
        torch.testing.assert_close(batch.acts[i], expected.float())
    again = decoder_batch(model, tokens, sites, torch.Generator().manual_seed(0), positions=allowed)
    assert torch.equal(again.acts, batch.acts)  # seeded
    weighted = decoder_batch(
        model,
        tokens,
        sites,
        torch.Generator().manual_seed(1),
        site_weights=torch.tensor([0.0, 0.0, 1.0]),
    )
    assert set(weighted.sites.tolist()) == {2}
    constant = null_activations(model, tokens, sites, allowed)
    for i, site in enumerate(sites):  # brute force: the mean over every input at the operands
        acts = site_activations(model, tokens, site)[:, [0, 2]].float()
        torch.testing.assert_close(constant[i], acts.reshape(-1, acts.shape[-1]).mean(0))
    null = decoder_batch(
        model, tokens, sites, torch.Generator().manual_seed(2), null_acts=constant, null_frac=1.0
    )
    assert set(null.positions.tolist()) == {-1}
    torch.testing.assert_close(null.acts, constant[null.sites])
    some = decoder_batch(
        model, tokens, sites, torch.Generator().manual_seed(2), null_acts=constant, null_frac=0.3
    )
    assert 10 < int((some.positions == -1).sum()) < 50
    with pytest.raises(ConfigError, match="at least one site"):
        decoder_batch(model, tokens, [], torch.Generator())
    with pytest.raises(ConfigError, match="needs null_acts"):
        decoder_batch(model, tokens, sites, torch.Generator(), null_frac=0.1)
    with pytest.raises(ConfigError, match="one per site"):
        decoder_batch(model, tokens, sites, torch.Generator(), null_acts=constant[:2], null_frac=0.1)
    with pytest.raises(ConfigError, match="site_weights"):
        decoder_batch(model, tokens, sites, torch.Generator(), site_weights=torch.zeros(3))


class _Recorder:
    """A stand-in decoder: writes rows of a fixed pool in turn and records what it was asked."""

    def __init__(self, pool: torch.Tensor) -> None:
        self.pool, self.calls = pool, []

    def sample(self, acts, sites, *, temperature=1.0, generator=None):
        self.calls.append((acts.clone(), sites.clone(), temperature))
        picks = torch.randint(0, len(self.pool), (len(acts),), generator=generator)
        return self.pool[picks]


def test_invert_verifies_merges_and_sorts_the_written_inputs() -> None:
    model = _model()
    every = _every_question()
    site = parse_site("L0.resid_post", model)
    query = site_activations(model, every[37:38], site)[0, 2]
    pool = every[[37, 5, 90, 36, 73]]
    decoder = _Recorder(pool)
    got = invert(
        model, decoder, query, site, 1, torch.Generator().manual_seed(0), per_setting=16, epsilon=0.05
    )
    assert [call[2] for call in decoder.calls] == [0.5, 1.0, 2.0, 2.0]
    assert all(torch.equal(call[1], torch.ones(16, dtype=torch.int64)) for call in decoder.calls)
    assert torch.equal(decoder.calls[0][0], query.float().expand(16, -1))  # no noise
    assert not torch.equal(decoder.calls[3][0], query.float().expand(16, -1))  # σ = 0.1 · std
    assert int(got.counts.sum()) == 64 and len(got.tokens) == len(torch.unique(got.tokens, dim=0))
    assert torch.equal(got.distances, got.distances.sort().values)
    for row, d in zip(got.tokens, got.distances, strict=True):  # brute force, per candidate
        acts = site_activations(model, row[None], site)[0]
        assert float(d) == pytest.approx(min(float((a - query).norm() / query.norm()) for a in acts))
    # the query's own input, re-run in a batch of candidates: its float64 activation matches the
    # query's one-row run up to rounding (a relative distance of a few ε), not necessarily exactly
    assert torch.equal(got.tokens[0], every[37]) and float(got.distances[0]) <= 1e-12
    inside = got.counts[got.distances < 0.05].sum()
    assert got.share_inside == pytest.approx(float(inside) / 64)
    with pytest.raises(ConfigError, match="ε must be"):
        invert(model, decoder, query, site, 1, torch.Generator(), epsilon=0.0)
