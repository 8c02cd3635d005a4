"""Models: build, save/load round trip, corrupt files, local Hugging Face checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from tinylens.errors import CheckpointError, ConfigError
from tinylens.model import ModelConfig, build_model, load_model, load_pretrained, save_model
from tinylens.store import CHECKSUM_KEY

from .helpers import model_cfg


def test_same_seed_same_weights_and_rng_untouched() -> None:
    cfg = model_cfg()
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = build_model(cfg, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after), "building a model must not consume the global RNG"
    b = build_model(cfg, seed=7)
    c = build_model(cfg, seed=8)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa, pb), name
    pairs = zip(a.parameters(), c.parameters(), strict=True)
    assert any(not torch.equal(pa, pc) for pa, pc in pairs)


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"n_layers": 2, "n_heads": 3, "d_head": 5},
        {"d_mlp": 0},
        {"normalization_type": None},
        {"positional_embedding": "rotary"},
    ],
)
def test_save_load_round_trip(tmp_path: Path, overrides: dict) -> None:
    cfg = model_cfg(**overrides)
    model = build_model(
        cfg, seed=1
    )  # load_model rebuilds with seed 0: the weights must come from the file
    save_model(model, cfg, tmp_path / "m.safetensors")
    loaded = load_model(tmp_path / "m.safetensors")
    tokens = torch.randint(0, 12, (4, 18))
    with torch.no_grad():
        assert torch.equal(model(tokens), loaded(tokens))
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"], "no temp files left"


def test_truncated_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    cfg = model_cfg()
    path = tmp_path / "m.safetensors"
    save_model(build_model(cfg, seed=0), cfg, path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_model(path)


def test_a_checkpoint_of_another_architecture_is_refused(tmp_path: Path) -> None:
    cfg = model_cfg()
    path = tmp_path / "m.safetensors"
    save_model(build_model(cfg, seed=0), cfg, path)
    load_model(path, expected=cfg)
    with pytest.raises(CheckpointError, match=r"n_ctx 18 \(config.json: 15\)"):
        load_model(path, expected=model_cfg().sized(d_vocab=12, n_ctx=15))
    with pytest.raises(CheckpointError, match=r"d_mlp 32 \(config.json: 64\)"):
        load_model(path, expected=model_cfg(d_mlp=64))


def test_missing_and_foreign_files_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_model(junk)


@pytest.mark.parametrize(
    "bad",
    [
        {"n_layers": 0},
        {"d_head": -1},
        {"act_fn": "tanh"},
        {"normalization_type": "BN"},
        {"positional_embedding": "alibi"},
    ],
)
def test_bad_model_config(bad: dict) -> None:
    base = {"n_layers": 1, "n_heads": 1, "d_model": 8, "d_head": 8, "d_mlp": 8}
    with pytest.raises(ConfigError):
        ModelConfig(**{**base, **bad})


def test_unsized_config_cannot_be_built() -> None:
    cfg = ModelConfig(n_layers=1, n_heads=1, d_model=8, d_head=8, d_mlp=8)
    with pytest.raises(ConfigError, match="sized"):
        build_model(cfg, seed=0)


def test_load_pretrained_local_gpt2(tmp_path: Path) -> None:
    """A tiny random GPT-2 saved with `transformers` stands in for a real checkpoint."""
    transformers = pytest.importorskip("transformers")
    hf_cfg = transformers.GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=4,
        n_positions=16,
        vocab_size=50,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(hf_cfg).eval()
    hf.save_pretrained(tmp_path / "gpt2-tiny")
    model = load_pretrained(tmp_path / "gpt2-tiny")
    tokens = torch.randint(0, 50, (2, 10))
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), hf(tokens).logits, atol=1e-5, rtol=1e-5)
    assert "blocks.1.attn.hook_z" in model.hook_dict
    # the random-init control: same architecture, fresh seeded weights, caller's RNG untouched
    state = torch.random.get_rng_state()
    control = load_pretrained(tmp_path / "gpt2-tiny", random_init=True, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    again = load_pretrained(tmp_path / "gpt2-tiny", random_init=True, seed=3)
    with torch.no_grad():
        assert torch.equal(control(tokens), again(tokens))
        assert not torch.allclose(control(tokens), model(tokens))
        other = load_pretrained(tmp_path / "gpt2-tiny", random_init=True, seed=4)
        assert not torch.equal(control(tokens), other(tokens))


def test_load_pretrained_rejects_a_non_checkpoint_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        load_pretrained(tmp_path)


def test_rotary_models_have_no_position_weights_and_see_order() -> None:
    rotary = build_model(model_cfg(positional_embedding="rotary"), seed=0).eval()
    assert not any("pos" in name for name, _ in rotary.named_parameters())
    tokens = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():  # attention over a permuted prefix differs: positions are encoded
        assert not torch.allclose(rotary(tokens)[0, -1], rotary(tokens[:, [1, 0, 2, 3, 4]])[0, -1])


def test_load_pretrained_never_reaches_a_pickle(tmp_path: Path) -> None:
    """FINDINGS 17: a stray safetensors file beside a pickled `pytorch_model.bin` once let the
    folder through to `from_pretrained`, which could unpickle the .bin; now either is refused."""
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "gpt2"}')
    (folder / "unrelated.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"no model\.safetensors"):
        load_pretrained(folder)
    (folder / "pytorch_model.bin").write_bytes(b"\x80\x04not a model")
    (folder / "model.safetensors").write_bytes(b"\0" * 16)
    with pytest.raises(CheckpointError, match=r"pickled weights \(pytorch_model\.bin\)"):
        load_pretrained(folder)


def test_non_finite_weights_without_a_checksum_are_refused(tmp_path: Path) -> None:
    """A checkpoint without its checksum (written before checksums, or stripped) still cannot
    hand `eval` a model of NaNs: loading refuses non-finite weights."""
    cfg = model_cfg()
    path = tmp_path / "m.safetensors"
    save_model(build_model(cfg, seed=0), cfg, path)
    with safe_open(str(path), framework="pt") as f:
        metadata = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
    del metadata[CHECKSUM_KEY]
    name = sorted(tensors)[0]
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    save_file(tensors, str(path), metadata=metadata)
    with pytest.raises(CheckpointError, match="non-finite weights"):
        load_model(path)
