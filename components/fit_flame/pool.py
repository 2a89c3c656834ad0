"""Runs ``prepare_input`` over the inputs, in order, in-process or in CPU worker processes.

Decoding, MediaPipe and resampling are CPU work of tens of ms per photo; a few worker processes
keep a GPU fit fed. Results come back in input order with a bounded number in flight. A worker
that dies (a crash inside a native decoder, an out-of-memory kill) costs only the input it was on:
the pool is rebuilt, the other in-flight inputs are retried one at a time, and the one that kills
a worker again becomes a failed row.
"""

from __future__ import annotations

import multiprocessing
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from components.fit_flame import prepare
from components.fit_flame.media import InputItem
from components.fit_flame.prepare import PrepareContext, PreparedInput, failed_input, init_worker, prepare_input


def prepared_inputs(
    ctx: PrepareContext, items: list[InputItem], unit_ids: list[str], workers: int
) -> Iterator[PreparedInput]:
    if workers <= 0:
        init_worker(ctx.cfg, worker_process=False)
        try:
            for item, uid in zip(items, unit_ids):
                yield prepare_input(ctx, item, uid)
        finally:
            if prepare._LANDMARKER is not None:
                prepare._LANDMARKER.close()
                prepare._LANDMARKER = None
        return
    yield from _parallel(ctx, list(zip(items, unit_ids)), workers)


def _new_pool(ctx: PrepareContext, workers: int) -> ProcessPoolExecutor:
    # spawn, not fork: the parent may hold CUDA and MediaPipe threads, which fork would break.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=init_worker, initargs=(ctx.cfg,))  # fmt: skip


def _parallel(ctx: PrepareContext, tasks: list[tuple[InputItem, str]], workers: int) -> Iterator[PreparedInput]:
    pool = _new_pool(ctx, workers)
    window: deque[tuple[tuple[InputItem, str], Future]] = deque()
    todo = deque(tasks)
    suspects: deque[tuple[InputItem, str]] = deque()  # in flight when a worker died: retried alone
    try:
        while todo or window or suspects:
            if suspects and not window:
                task = suspects.popleft()
                future = pool.submit(prepare_input, ctx, *task)
                try:
                    yield future.result()
                except BrokenProcessPool:
                    pool.shutdown(cancel_futures=True)
                    pool = _new_pool(ctx, workers)
                    yield failed_input(ctx, *task, "", "the worker process died while reading this file "
                                       "(crash or out-of-memory in a decoder)")  # fmt: skip
                continue
            while todo and not suspects and len(window) < 2 * workers:
                task = todo.popleft()
                window.append((task, pool.submit(prepare_input, ctx, *task)))
            task, future = window.popleft()
            try:
                yield future.result()
            except BrokenProcessPool:
                suspects.extend([task, *(t for t, _ in window)])
                window.clear()
                pool.shutdown(cancel_futures=True)
                pool = _new_pool(ctx, workers)
    finally:
        pool.shutdown(cancel_futures=True)
