"""The runs of one ``kfrouter sim run`` — every policy, times every replication — as jobs, run one after
another or in worker processes (``--jobs N``).

What a replication is (docs/simulator.md): replication 0 is the trace file as given, replayed with the run
seed (``--seed``, default the trace's). For a trace made by ``kfrouter sim gen`` (its header holds the
generator's parameters), replication k >= 1 is the trace the generator makes from those parameters with
seed + k, streamed without a file, replayed with run seed + k. Any other trace (recorded traffic) is the
same customers every time: replication k replays the file with run seed + k, which draws only the
injected create failures, so replications of such a trace need ``--create-failure-rate`` > 0 (else every
replication would be the same run and is refused).

Rules:
- a job is a picklable value (``Job``); ``run_job`` is a top-level function that imports what it needs,
  so it works with the ``spawn`` start method (a fresh interpreter per worker: no state inherited);
- results come back in job order, whatever order the workers finish in, so the report of ``--jobs N``
  is that of ``--jobs 1`` apart from ``wall_s`` and ``customers_per_s``;
- a job that fails returns ``JobFailed`` (the exit code and message ``sim run`` prints: exceptions such as
  ``TraceError`` do not survive pickling); the first failure in job order is the one reported, and once a
  job failed the jobs not yet started are cancelled (every job before it has started, so the first failure
  is the same as with ``--jobs 1``).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from typing import NamedTuple

from kfrouter.sim.gc_policy import tune_for_replay
from kfrouter.sim.gen import GENERATED_BY, GenError, GenParams, header_for, params_from_header
from kfrouter.sim.runner import RunConfig, RunResult
from kfrouter.sim.trace import Header

EXIT_USAGE = 2  # bad input: the trace, a setting
EXIT_FAILED = 1  # the replay could not go on (SimError), or a worker died
MAX_REPLICATIONS = 1000


class ReplicationError(ValueError):
    """Replications of this trace cannot be made as asked; the message says why."""


class Job(NamedTuple):
    """One replay: ``config`` (policy and run seed) over the trace file ``path`` (replication 0, and every
    replication of a recorded trace) or over the trace ``params`` generates (``sim gen`` traces, k >= 1)."""

    replication: int
    config: RunConfig
    path: str
    params: GenParams | None = None


class JobFailed(NamedTuple):
    """A job that could not run: what ``sim run`` exits with and prints."""

    exit_code: int
    message: str


Outcome = RunResult | JobFailed


def default_jobs() -> int:
    """The number of cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def replication_sources(
    path: str, header: Header, replications: int, failure_rate: float
) -> list[GenParams | None]:
    """What each replication replays: None = the file itself, else the generator's parameters."""
    if not 1 <= replications <= MAX_REPLICATIONS:
        raise ReplicationError(f"--replications must be between 1 and {MAX_REPLICATIONS}, got {replications}")
    if replications == 1:
        return [None]
    if header.created_by == GENERATED_BY and "params" in header.meta:
        try:
            params = params_from_header(header)
        except GenError as exc:
            raise ReplicationError(f"{path}: cannot re-generate the trace for replications: {exc}") from None
        return [None] + [replace(params, seed=params.seed + k) for k in range(1, replications)]
    if failure_rate > 0:
        return [None] * replications
    raise ReplicationError(
        f"{path}: --replications {replications}: the trace was not made by {GENERATED_BY!r}, so every "
        "replication replays the same customers and differs only in injected create failures, and "
        "--create-failure-rate is 0: every replication would be the same run"
    )


def plan(
    path: str, header: Header, policies: Sequence[str], base: RunConfig, replications: int = 1
) -> list[Job]:
    """The jobs of one ``sim run``, replication by replication, policies in the order given. ``base``
    holds the settings (its ``policy`` is replaced; replication k's seed is ``base.seed + k``)."""
    if not policies:
        raise ValueError("no policies to run")
    sources = replication_sources(path, header, replications, base.create_failure_rate)
    return [
        Job(k, replace(base, policy=name, seed=base.seed + k), path, params)
        for k, params in enumerate(sources)
        for name in policies
    ]


def run_job(job: Job, progress: Callable[[float], None] | None = None) -> Outcome:
    """Run one job (in this process or a worker). ``progress`` gets the share of the trace file read."""
    from kfrouter.router.core.errors import ConfigError
    from kfrouter.sim.gen import generate_blocks
    from kfrouter.sim.runner import SimError, groups_of, run_records, run_trace

    try:
        if job.params is None:
            return run_trace(job.path, job.config, progress=progress)
        header = header_for(job.params)
        return run_records(header, generate_blocks(job.params), job.config, groups=groups_of(header))
    except SimError as exc:
        return JobFailed(EXIT_FAILED, str(exc))
    except (ConfigError, ValueError) as exc:  # TraceError and GenError are ValueErrors
        return JobFailed(EXIT_USAGE, str(exc))


def run_jobs(
    jobs: Sequence[Job], workers: int, progress: Callable[[float], None] | None = None
) -> list[Outcome]:
    """Every job's outcome, in job order: in this process when ``workers`` is 1 (or there is one job),
    else in up to ``workers`` spawned processes. ``progress`` gets the share of the work done (0..1).
    After a failure, jobs not yet started are not run (their outcome is the failure that stopped them)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    n = len(jobs)
    if workers == 1 or n <= 1:
        outcomes: list[Outcome] = []
        for i, job in enumerate(jobs):
            outcome = run_job(job, None if progress is None else _share_of(progress, i, n))
            outcomes.append(outcome)
            if isinstance(outcome, JobFailed):
                return outcomes + [outcome] * (n - i - 1)
        return outcomes
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        max_workers=min(workers, n), mp_context=ctx, initializer=tune_for_replay
    ) as pool:
        futures: list[Future[Outcome]] = [pool.submit(run_job, job) for job in jobs]
        pending = set(futures)
        done = 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            done += len(finished)
            if progress is not None:
                progress(done / n)
            if any(_failed(f) for f in finished):
                for f in pending:
                    f.cancel()  # not started yet; those running finish
                wait(pending)
                break
    return _in_order(futures)


def _share_of(progress: Callable[[float], None], i: int, n: int) -> Callable[[float], None]:
    """Job ``i``'s progress (0..1) as progress of all ``n`` jobs."""
    return lambda f: progress((i + f) / n)


def _failed(f: Future[Outcome]) -> bool:
    return f.cancelled() or f.exception() is not None or isinstance(f.result(), JobFailed)


def _in_order(futures: list[Future[Outcome]]) -> list[Outcome]:
    """The outcomes in job order; from the first failure on, that failure (what ``--jobs 1`` returns)."""
    out: list[Outcome] = []
    for f in futures:
        if f.cancelled():
            outcome: Outcome = JobFailed(EXIT_FAILED, "cancelled after an earlier job failed")
        elif (exc := f.exception()) is not None:
            why = "a worker process died" if isinstance(exc, BrokenProcessPool) else repr(exc)
            outcome = JobFailed(EXIT_FAILED, f"{why} while running a simulation")
        else:
            outcome = f.result()
        if isinstance(outcome, JobFailed):
            return out + [outcome] * (len(futures) - len(out))
        out.append(outcome)
    return out


def first_failure(outcomes: Sequence[Outcome]) -> JobFailed | None:
    return next((o for o in outcomes if isinstance(o, JobFailed)), None)


def by_replication(jobs: Sequence[Job], outcomes: Sequence[Outcome]) -> list[list[RunResult]]:
    """The results grouped per replication (each in policy order); every outcome must be a result."""
    groups: dict[int, list[RunResult]] = {}
    for job, outcome in zip(jobs, outcomes, strict=True):
        if isinstance(outcome, JobFailed):
            raise ValueError(
                f"job {job.config.policy!r} (replication {job.replication}) failed: {outcome.message}"
            )
        groups.setdefault(job.replication, []).append(outcome)
    return [groups[k] for k in sorted(groups)]
