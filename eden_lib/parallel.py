"""Independent runs side by side: forked worker processes with one intra-op thread each.

Small CPU networks use a second core poorly (measured on 2 cores: a fine-tuning run with 2 threads is only 1.4x as
fast as with 1), so a stage's independent runs (fine-tuning seeds, shot counts, protocols) go faster as one run per
core. Workers are forked, so a job is any callable over data the parent already holds (nothing is pickled but the
result). Every job runs with one thread in every setting, ``workers=1`` included, so the numbers do not depend on
``workers``; each job must seed itself (e.g. :func:`eden_lib.seed.seed_everything`). On a GPU the jobs run in this
process, one after the other.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TypeVar

import torch

from eden_lib.engine import select_device

T = TypeVar("T")

#: the jobs of the running :func:`run_jobs` call, inherited by the forked workers
_JOBS: Sequence[Callable[[], object]] = ()


@contextmanager
def single_thread() -> Iterator[None]:
    """Run the block with one intra-op thread, restoring the previous count after."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run(index: int) -> object:
    torch.set_num_threads(1)
    return _JOBS[index]()


def run_jobs(jobs: Sequence[Callable[[], T]], workers: int, device: str = "cpu") -> list[T]:
    """Results of ``jobs`` in their order, computed by up to ``workers`` forked processes.

    Args:
        jobs: callables without arguments, each self-seeded; results must pickle.
        workers: processes side by side (1: in this process).
        device: ``pretrain.device`` (``auto`` | ``cpu`` | ``cuda``); on a GPU the jobs run in this process.

    Raises:
        whatever a job raised (re-raised here with the worker's traceback attached).
    """
    global _JOBS
    forkable = "fork" in multiprocessing.get_all_start_methods()
    if workers <= 1 or len(jobs) <= 1 or select_device(device).type != "cpu" or not forkable:
        with single_thread():
            return [job() for job in jobs]
    _JOBS = jobs
    try:
        with multiprocessing.get_context("fork").Pool(min(workers, len(jobs))) as pool:
            return pool.map(_run, range(len(jobs)), chunksize=1)
    finally:
        _JOBS = ()
