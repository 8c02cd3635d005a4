"""Sweep throughput, local backend vs Ray, side by side in one process: trials per hour, and what
Ray costs per trial.

One spec (N seeds of the addition task, tiny preset, S steps each) runs four ways, each into a fresh
workspace so that every trial trains:

- ``local, all cores``: one trial after another, each with every core (the anchor);
- ``local, 1 core``: the same with one thread per trial;
- ``ray, all cores``: the anchor's trials as Ray tasks, one at a time (only Ray's cost differs);
- ``ray, 1 core``: one-core trials, as many at once as there are cores.

Ray's own start and stop (``ray.init`` of a local cluster, ``ray.shutdown``) are timed apart from the
sweep; a sweep pays them once. "Overhead per trial" is ``(ray wall − local wall) / N`` with all
cores per trial, one trial at a time in both: worker start-up (a fresh Python importing torch and
tinylens), scheduling and result transfer. On a 2-core laptop Ray is not expected to gain
anything; the point is that the same spec runs unchanged on a cluster.

    python benchmarks/sweep_throughput.py [--trials 8] [--steps 300]
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time

import ray

from tinylens.store import Workspace
from tinylens.sweep import SweepResult, parse_spec, run_sweep


def spec_table(trials: int, steps: int, cpus: int) -> dict:
    return {
        "sweep": {"name": "bench", "task": "addition", "preset": "tiny", "cpus_per_trial": cpus},
        "base": {"train": {"steps": steps, "eval_every": steps, "save_every": steps}},
        "grid": {"seed": list(range(trials))},
    }


def timed_sweep(backend: str, trials: int, steps: int, cpus: int) -> tuple[float, SweepResult]:
    spec = parse_spec(spec_table(trials, steps, cpus))
    with tempfile.TemporaryDirectory(prefix="tl-sweep-bench") as root:
        start = time.perf_counter()
        result = run_sweep(Workspace(root), spec, backend=backend, progress=False)
        wall = time.perf_counter() - start
    assert all(t.status == "done" for t in result.trials), [t.error for t in result.trials]
    return wall, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    print(f"{args.trials} trials of addition/tiny, {args.steps} steps each, on {cores} cores")
    print(f"{'variant':<18}{'wall s':>9}{'trials/h':>10}{'s/trial in worker':>19}{'vs anchor':>11}")
    rows: dict[str, float] = {}
    starts, stops = [], []
    for backend, cpus in (("local", cores), ("local", 1), ("ray", cores), ("ray", 1)):
        if backend == "ray":
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            start = time.perf_counter()
            ray.init(
                address="local",
                num_cpus=cores,
                include_dashboard=False,
                log_to_driver=False,
                logging_level=logging.ERROR,
                object_store_memory=100 * 2**20,
            )
            starts.append(time.perf_counter() - start)
        wall, result = timed_sweep(backend, args.trials, args.steps, cpus)
        if backend == "ray":
            start = time.perf_counter()
            ray.shutdown()
            stops.append(time.perf_counter() - start)
        name = f"{backend}, {'all cores' if cpus == cores else '1 core'}"
        rows[name] = wall
        in_worker = sum(o.elapsed_s for o in result.outcomes.values()) / args.trials
        ratio = rows["local, all cores"] / wall
        print(
            f"{name:<18}{wall:>9.1f}{3600 * args.trials / wall:>10.0f}{in_worker:>19.2f}{ratio:>10.2f}×"
        )
    print(f"ray.init (local, {cores} CPUs): {sum(starts) / len(starts):.1f} s; ray.shutdown: "
          f"{sum(stops) / len(stops):.1f} s (once per sweep, not in the walls above)")  # fmt: skip
    extra = (rows["ray, all cores"] - rows["local, all cores"]) / args.trials
    print(f"Ray's overhead per trial (one at a time, all cores each): {extra:+.2f} s")
    gain = rows["local, 1 core"] / rows["ray, 1 core"]
    print(
        f"one-core trials {cores} at a time on Ray: {gain:.2f}× the local one-core rate (ideal {cores}×)"
    )


if __name__ == "__main__":
    main()
