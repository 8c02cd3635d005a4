"""InversionView sampling: candidates written and verified per second, batched against one at a time.

The probed model is the counting model's shape (2 layers, 1 head, d_model 64) and the decoder the
paper's (2 layers, d_model 256, 4 heads, 6 conditioning blocks), both at random initialisation: the
speed does not depend on what they learned. ``invert`` writes every setting's candidates in one
batch and verifies all distinct ones in one pass; the loop writes one candidate at a time and
verifies each alone, as a per-candidate pipeline would. Before any time is printed, the distances
of the batched run's candidates are recomputed one at a time and compared element-wise.

    python benchmarks/inversion_speed.py [--per-setting 64] [--loop-per-setting 8] [--site L0.head0]
"""

from __future__ import annotations

import argparse
import time

import torch
from timing import best_time  # benchmarks/timing.py (scripts run from their folder)

from tinylens.analysis import SETTINGS, invert, parse_site, preimage_distance, site_activations
from tinylens.config import make_run_config
from tinylens.decoder import DecoderConfig, InversionDecoder
from tinylens.model import build_model
from tinylens.tasks import CountingTask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-setting", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--site", default="L0.head0")
    parser.add_argument(
        "--loop-per-setting", type=int, default=8, help="candidates per setting the slow loop times"
    )
    args = parser.parse_args()

    task = CountingTask()
    cfg = make_run_config("counting", "inversion")
    model = build_model(cfg.model, seed=0).eval()
    decoder = InversionDecoder(
        DecoderConfig(d_vocab=task.d_vocab, n_ctx=task.seq_len, d_act=cfg.model.d_model, n_sites=9),
        seed=0,
    ).eval()
    site = parse_site(args.site, model)
    query_input = task.sample(1, torch.Generator().manual_seed(0))
    query = site_activations(model, query_input, site)[0, task.query_position]
    n = args.per_setting * len(SETTINGS)

    def batched():
        return invert(
            model,
            decoder,
            query,
            site,
            0,
            torch.Generator().manual_seed(1),
            per_setting=args.per_setting,
        )

    def one_at_a_time():
        g = torch.Generator().manual_seed(1)
        distances = []
        for temperature, noise in SETTINGS:
            for _ in range(args.loop_per_setting):
                act = query[None].clone()
                if noise:
                    act += noise * float(query.std()) * torch.randn(act.shape, generator=g)
                tokens = decoder.sample(
                    act, torch.zeros(1, dtype=torch.int64), temperature=temperature, generator=g
                )
                distances.append(preimage_distance(site_activations(model, tokens, site), query))
        return torch.cat(distances)

    result = batched()
    alone = torch.cat(
        [preimage_distance(site_activations(model, t[None], site), query) for t in result.tokens]
    )
    torch.testing.assert_close(alone, result.distances, atol=1e-5, rtol=1e-5)
    print(
        f"probed model 2 × 64, decoder 2 × 256; {n} candidates per query ({len(SETTINGS)} settings × "
        f"{args.per_setting}), site {args.site}, {torch.get_num_threads()} threads"
    )
    print(
        f"verified distances agree: max |difference| {float((alone - result.distances).abs().max()):.2e}"
    )
    t_batched = best_time(batched, args.repeats, "cpu")
    start = time.perf_counter()
    one_at_a_time()  # once, on fewer candidates: it is the slow side (the rate is per candidate)
    t_loop = time.perf_counter() - start
    n_loop = args.loop_per_setting * len(SETTINGS)
    rate_loop, rate_batched = n_loop / t_loop, n / t_batched
    print(f"{'one at a time':>16} {rate_loop:10.1f} candidates/s  ({n_loop} in {t_loop:.2f} s)")
    print(f"{'batched':>16} {rate_batched:10.1f} candidates/s  ({n} in {t_batched:.2f} s)")
    print(f"{'speed-up':>16} {rate_batched / rate_loop:10.1f}×")


if __name__ == "__main__":
    main()
