"""Head × position activation patching: tinylens's batched sweep beside TransformerLens's, one process.

Same 2-layer model, same clean and corrupted prompts, same metric (logit difference at the last
position), same patch (each head's ``hook_z`` at each position, noised from the corrupted run):
``transformer_lens.patching.get_act_patch_attn_head_out_by_pos`` runs one forward pass per patch,
``tinylens.analysis.patch_sweep(site="head")`` batches them. The two results are compared
element-wise before any time is printed.

    python benchmarks/patching_speed.py [--batch 16] [--pos 20] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import contextlib
import io

import torch
import transformer_lens.patching as tl_patching
from timing import best_time  # benchmarks/timing.py (scripts run from their folder)

from tinylens.analysis import logit_diff, patch_sweep
from tinylens.model import ModelConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--pos", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = ModelConfig(n_layers=2, n_heads=8, d_model=128, d_head=16, d_mlp=512, d_vocab=100, n_ctx=64)
    model = build_model(cfg, seed=0).eval().to(args.device)
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(0, cfg.d_vocab, (args.batch, args.pos), generator=g).to(args.device)
    corrupt = clean.clone()
    corrupt[:, : args.pos // 2] = torch.randint(0, cfg.d_vocab, (args.batch, args.pos // 2), generator=g)
    answer = torch.randint(0, cfg.d_vocab, (args.batch,), generator=g).to(args.device)
    contrast = torch.randint(0, cfg.d_vocab, (args.batch,), generator=g).to(args.device)
    metric = logit_diff(answer, contrast)
    with torch.no_grad():
        _, corrupt_cache = model.run_with_cache(corrupt)

    def theirs() -> torch.Tensor:
        with contextlib.redirect_stderr(io.StringIO()):  # its per-patch progress bar
            return tl_patching.get_act_patch_attn_head_out_by_pos(model, clean, corrupt_cache, metric)

    def ours() -> torch.Tensor:
        return patch_sweep(model, clean, corrupt, metric, site="head").raw

    reference, result = theirs(), ours()
    diff = float((reference.float().cpu() - result.cpu()).abs().max())
    patches = cfg.n_layers * args.pos * cfg.n_heads
    print(
        f"model {cfg.n_layers} layers × {cfg.n_heads} heads, d_model {cfg.d_model}; batch "
        f"{args.batch} × {args.pos} positions; {patches} patches; device {args.device}"
    )
    print(f"results agree: max |difference| {diff:.2e}")
    if diff > 1e-4:
        raise SystemExit("results differ: not timing a wrong answer")
    t_theirs = best_time(theirs, args.repeats, args.device)
    t_ours = best_time(ours, args.repeats, args.device)
    print(f"{'transformer_lens':>18} {t_theirs * 1000:>10.1f} ms")
    print(f"{'tinylens':>18} {t_ours * 1000:>10.1f} ms")
    print(f"{'speed-up':>18} {t_theirs / t_ours:>10.1f}×")


if __name__ == "__main__":
    main()
