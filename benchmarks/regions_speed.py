"""Stable-region interpolation: tinylens's fast sweep beside one hooked pass per α, one process.

Same 3-layer model (the seqcont quick model's shape), same prompt pairs, same α grid, same write
site (``blocks.0.hook_resid_post`` at the last position) and read site (the final norm's output):
``interpolate(..., method="reference")`` is the paper's way, one hooked forward pass through the
whole model per α; ``method="fast"`` runs only what the patch can change. The two results (L2,
KL and logit difference of every pair and step) are compared element-wise before any time is
printed. Threads follow the environment (``OMP_NUM_THREADS``), as torch reads it.

    python benchmarks/regions_speed.py [--pairs 64] [--pos 24] [--steps 11] [--repeats 5] [--device cpu]
"""

from __future__ import annotations

import argparse

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from their folder)

from tinylens.analysis import interpolate
from tinylens.model import ModelConfig, build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=64)
    parser.add_argument("--pos", type=int, default=24)
    parser.add_argument("--steps", type=int, default=11)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()

    cfg = ModelConfig(n_layers=3, n_heads=4, d_model=64, d_head=16, d_mlp=256, d_vocab=200, n_ctx=32)
    model = build_model(cfg, seed=0).eval().to(args.device)
    g = torch.Generator().manual_seed(0)
    a, b = (
        torch.randint(0, cfg.d_vocab, (args.pairs, args.pos), generator=g).to(args.device) for _ in "ab"
    )

    def run(method: str):
        return interpolate(model, a, b, steps=args.steps, method=method)

    reference, result = run("reference"), run("fast")
    diff = max(
        float((getattr(reference, name) - getattr(result, name)).abs().max())
        for name in ("l2", "kl", "logit_diff")
    )
    print(
        f"model {cfg.n_layers} layers × {cfg.n_heads} heads, d_model {cfg.d_model}; "
        f"{args.pairs} pairs × {args.pos} positions × {args.steps} steps; device {args.device}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"results agree: max |difference| {diff:.2e}")
    for name in ("l2", "kl", "logit_diff"):
        ok = torch.allclose(getattr(result, name), getattr(reference, name), atol=1e-5, rtol=1e-4)
        if not ok:
            raise SystemExit(f"{name} differs: not timing a wrong answer")
    t_ref = best_time(lambda: run("reference"), args.repeats, args.device)
    t_fast = best_time(lambda: run("fast"), args.repeats, args.device)
    print(f"{'reference':>18} {t_ref * 1000:>10.1f} ms")
    print(f"{'fast':>18} {t_fast * 1000:>10.1f} ms")
    print(f"{'speed-up':>18} {t_ref / t_fast:>10.1f}×")


if __name__ == "__main__":
    main()
