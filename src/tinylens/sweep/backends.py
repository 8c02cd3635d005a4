"""Where a sweep's trials run: one after another in this process, or as Ray tasks.

Both backends execute the same :func:`~tinylens.sweep.trial.run_trial` on the same jobs and hand
each outcome to the driver as it arrives; only the driver writes the index. Ray is imported only
when the ``ray`` backend is asked for, so a local sweep needs no Ray installed.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

from tinylens.errors import ConfigError, Interrupted
from tinylens.sweep.trial import TrialJob, TrialOutcome, run_trial

Backend = Literal["local", "ray"]
BACKENDS: tuple[str, ...] = ("local", "ray")
OnOutcome = Callable[[TrialJob, TrialOutcome], None]
OnPoll = Callable[[Sequence[TrialJob]], None]
"""Called with the jobs still in flight, about twice a second (the driver's progress bar)."""

POLL_S = 0.5
"""How long the Ray driver waits for a result before refreshing its progress."""
RAY_OBJECT_STORE_BYTES = 100 * 2**20
"""Object store of a local Ray: results are small records (Ray's minimum is 75 MiB; its default,
30% of memory in /dev/shm, would reserve gigabytes for nothing)."""


def run_local(jobs: Sequence[TrialJob], on_outcome: OnOutcome, on_poll: OnPoll) -> None:
    """Run the trials one after another in this process.

    Raises:
        Interrupted: Ctrl-C stopped a trial (it saved its state and resumes next time).
    """
    for job in jobs:
        on_poll([job])
        outcome = run_trial(job)
        on_outcome(job, outcome)
        if outcome.status == "interrupted":
            raise Interrupted(f"trial {job.run} was interrupted")


def run_ray(
    jobs: Sequence[TrialJob],
    on_outcome: OnOutcome,
    on_poll: OnPoll,
    *,
    address: str | None = None,
    num_cpus: int | None = None,
    max_retries: int = 3,
) -> None:
    """Submit every trial as a Ray task needing ``job.cpus`` CPUs, and hand back outcomes as they
    finish. A worker that dies is retried ``max_retries`` times (each retry resumes the run from
    its last saved state); a trial still lost after that comes back ``failed``.

    Connects to the cluster at ``address``, or starts a local Ray with ``num_cpus`` CPUs (default:
    those this process may use) and stops it afterwards; a Ray this process had already started
    is used as it is.

    Raises:
        ConfigError: Ray is not installed, or a trial needs more CPUs than the local Ray has.
    """
    ray = _import_ray()
    started = not ray.is_initialized()
    if started:
        _start(ray, address, num_cpus)
    try:
        cluster_cpus = ray.cluster_resources().get("CPU", 0)
        wanted = max((job.cpus for job in jobs), default=0)
        if address is None and wanted > cluster_cpus:
            raise ConfigError(
                f"a trial asks for {wanted} CPUs (cpus_per_trial) but the local Ray has "
                f"{cluster_cpus:g}; lower cpus_per_trial or raise --cpus"
            )
        task = ray.remote(run_trial)
        in_flight = {
            task.options(
                num_cpus=job.cpus,
                num_gpus=job.gpus,
                max_retries=max_retries,
                retry_exceptions=False,  # run_trial returns failures; only a lost worker retries
                name=f"tinylens trial {job.run}",
            ).remote(job): job
            for job in jobs
        }
        while in_flight:
            on_poll(list(in_flight.values()))
            # a timeout always: without one, ray.wait can block for good on a lost node
            ready, _ = ray.wait(list(in_flight), num_returns=len(in_flight), timeout=POLL_S)
            for ref in ready:
                job = in_flight.pop(ref)
                on_outcome(job, _outcome(ray, ref, job, max_retries))
    finally:
        if started:
            ray.shutdown()


def _outcome(ray: Any, ref: Any, job: TrialJob, max_retries: int) -> TrialOutcome:
    try:
        return ray.get(ref)
    except ray.exceptions.RayError as err:  # the worker died more often than it was retried
        error = f"{type(err).__name__}: the worker was lost {max_retries + 1} times ({err})"
        return TrialOutcome(job.run, "failed", error, -1, 0, 0.0)


def _start(ray: Any, address: str | None, num_cpus: int | None) -> None:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report from a laptop
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,  # trials report through their outcome, not their output
        "logging_level": logging.ERROR,
    }
    if address is None:
        # "local": always a new cluster of our own, never one another program left running
        options.update(
            address="local",
            num_cpus=num_cpus or len(os.sched_getaffinity(0)),  # the CPUs this process may use
            object_store_memory=RAY_OBJECT_STORE_BYTES,
        )
    else:
        options["address"] = address
    try:
        ray.init(**options)
    except ConnectionError as err:
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {err}") from None


def require_ray() -> None:
    """Raise the install hint now, before a sweep writes anything, if Ray is missing."""
    _import_ray()


def _import_ray() -> Any:
    try:
        import ray  # noqa: PLC0415 (optional: only the ray backend needs it)
    except ImportError:
        raise ConfigError(
            "the ray backend needs Ray: pip install 'tinylens[ray]' (or use --backend local)"
        ) from None
    return ray
