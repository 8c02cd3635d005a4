"""InversionView's conditional decoder: causal, conditioned everywhere, seeded, and it can learn."""

from __future__ import annotations

import pytest
import torch

from tinylens.decoder import DecoderConfig, InversionDecoder
from tinylens.errors import ConfigError

CFG = DecoderConfig(
    d_vocab=11, n_ctx=8, d_act=6, n_sites=3, d_model=32, n_layers=2, n_heads=4, n_cond_blocks=2
)


def _inputs(batch: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, CFG.d_vocab, (batch, CFG.n_ctx), generator=g)
    acts = torch.randn(batch, CFG.d_act, generator=g)
    sites = torch.randint(0, CFG.n_sites, (batch,), generator=g)
    return tokens, acts, sites


def test_logits_at_a_position_depend_only_on_the_tokens_before_it() -> None:
    decoder = InversionDecoder(CFG, seed=0).eval()
    tokens, acts, sites = _inputs()
    logits = decoder(tokens, acts, sites)
    assert logits.shape == (5, CFG.n_ctx, CFG.d_vocab)
    changed = tokens.clone()
    changed[:, 5] = (changed[:, 5] + 1) % CFG.d_vocab
    other = decoder(changed, acts, sites)
    torch.testing.assert_close(other[:, :6], logits[:, :6])  # position 5's own logits predict it
    assert not torch.allclose(other[:, 6], logits[:, 6])


def test_the_activation_and_the_site_reach_every_position() -> None:
    decoder = InversionDecoder(CFG, seed=0).eval()
    tokens, acts, sites = _inputs()
    logits = decoder(tokens, acts, sites)
    for other in (decoder(tokens, acts + 1.0, sites), decoder(tokens, acts, (sites + 1) % CFG.n_sites)):
        assert not torch.allclose(other[:, 0], logits[:, 0])  # the first token, from the slot alone
        assert not torch.allclose(other[:, -1], logits[:, -1])


def test_construction_and_sampling_are_seeded() -> None:
    a, b = InversionDecoder(CFG, seed=1), InversionDecoder(CFG, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(InversionDecoder(CFG, seed=2).parameters()), next(a.parameters()))
    _, acts, sites = _inputs()
    one = a.sample(acts, sites, temperature=1.0, generator=torch.Generator().manual_seed(0))
    two = a.sample(acts, sites, temperature=1.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(one, two) and one.shape == (5, CFG.n_ctx)
    assert int(one.min()) >= 0 and int(one.max()) < CFG.d_vocab  # never the start token
    greedy = a.sample(acts, sites, temperature=0.0)
    with torch.no_grad():
        assert torch.equal(a(greedy, acts, sites).argmax(-1), greedy)  # greedy: each token the argmax


def test_it_learns_to_write_the_input_its_activation_came_from() -> None:
    small = DecoderConfig(
        d_vocab=11, n_ctx=8, d_act=6, n_sites=1, d_model=32, n_layers=1, n_heads=2, n_cond_blocks=1
    )
    decoder = InversionDecoder(small, seed=0)
    tokens, acts, _ = _inputs(batch=4, seed=3)
    sites = torch.zeros(4, dtype=torch.int64)
    optimizer = torch.optim.AdamW(decoder.parameters(), lr=3e-3)
    for _ in range(200):
        loss = torch.nn.functional.cross_entropy(
            decoder(tokens, acts, sites).flatten(0, 1), tokens.flatten()
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert float(loss.detach()) < 0.05
    assert torch.equal(decoder.eval().sample(acts, sites, temperature=0.0), tokens)


def test_bad_shapes_and_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match="divisible"):
        DecoderConfig(d_vocab=5, n_ctx=4, d_act=3, n_sites=1, d_model=30, n_heads=4)
    with pytest.raises(ConfigError, match="n_sites must be an integer in 1–"):
        DecoderConfig(d_vocab=5, n_ctx=4, d_act=3, n_sites=0)
    decoder = InversionDecoder(CFG)
    tokens, acts, sites = _inputs()
    with pytest.raises(ConfigError, match="at most 8 tokens"):
        decoder(torch.cat([tokens, tokens], 1), acts, sites)
    with pytest.raises(ConfigError, match="temperature"):
        decoder.sample(acts, sites, temperature=-1.0)


def test_cached_sampling_writes_what_recomputing_the_prefix_writes() -> None:
    decoder = InversionDecoder(CFG, seed=4).double().eval()
    _, acts, sites = _inputs(batch=6, seed=5)
    acts = acts.double()
    for temperature in (0.0, 1.0, 2.0):
        fast = decoder.sample(
            acts, sites, temperature=temperature, generator=torch.Generator().manual_seed(7)
        )
        slow = decoder.sample(
            acts, sites, temperature=temperature, generator=torch.Generator().manual_seed(7), cache=False
        )
        assert torch.equal(fast, slow), temperature
