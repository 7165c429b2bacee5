"""Running the fused kernels on torch's own OpenMP threads.

The kernels release the GIL (numba ``nogil``). A large call splits its rows into fixed parts
and runs them through ``GOMP_parallel`` of the OpenMP runtime torch loaded (never a second
one), each thread taking parts tid, tid + n, ... through a ctypes callback. A thread pool of
our own was tried first: torch's OpenMP workers spin for milliseconds after each parallel torch
operation, on the core that pool needed (2 threads ran no faster than one: 8.8 against 8.8 ms
at B=32 T=128 K=50; on torch's threads 4.3-4.8 against 7.7-8.0 ms). Results do not depend on
the split: each row is computed by the same code, and gradient sums go to fixed chunks summed
in order. Importing this module imports only torch.
"""

from __future__ import annotations

import ctypes
import functools
import itertools
import os
from collections.abc import Callable

import torch

from chaincrf.crf import tracing, tuning

_IMPORT_PID = os.getpid()
_jobs: dict[int, tuple[Callable[[int], object], int, list[BaseException]]] = {}
_job_ids = itertools.count(1)


def _run_parts(data: int | None) -> None:
    """The OpenMP callback: this thread's share of the job registered under ``data``."""
    run, parts, failures = _jobs[data or 0]
    try:
        gomp = _openmp()
        tid, team = gomp.omp_get_thread_num(), gomp.omp_get_num_threads()
        for part in range(tid, parts, team):
            run(part)
    except BaseException as err:  # re-raised on the calling thread
        failures.append(err)


@functools.cache
def _openmp() -> ctypes.CDLL | None:
    """The OpenMP runtime torch runs on (already loaded: RTLD_NOLOAD), or None."""
    if not torch.backends.openmp.is_available() or not hasattr(os, "RTLD_NOLOAD"):
        return None
    for name in ("libgomp.so.1", "libiomp5.so", "libomp.so"):
        try:
            lib = ctypes.CDLL(name, mode=os.RTLD_NOLOAD)
            lib.GOMP_parallel.argtypes = [_CALLBACK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        except (OSError, AttributeError):
            continue
        lib.GOMP_parallel.restype = None
        lib.omp_get_thread_num.restype = ctypes.c_int
        lib.omp_get_num_threads.restype = ctypes.c_int
        return lib
    return None


_CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
_callback = _CALLBACK(_run_parts)


def _threads(B: int, T: int, K: int, viterbi: bool = False) -> int:
    """How many of torch's threads a call over B rows of T steps and K tags uses (see
    tuning.FUSED); 1 in a process forked after chaincrf was imported (an OpenMP runtime's
    threads do not survive a fork) or where torch's OpenMP runtime cannot be found."""
    threads = min(torch.get_num_threads(), B)
    tune = tuning.FUSED
    least = tune.split_min_btkk_viterbi if viterbi else tune.split_min_btkk
    work = B * T * K * K
    if threads < 2 or work < least:
        return 1
    if os.getpid() != _IMPORT_PID or _openmp() is None:
        return 1
    tracing.path_taken("fused_threads", threads)
    return threads


def _split(parts: int, threads: int, call: Callable[[int, int], int]) -> list[int]:
    """[call(lo, hi)] over ``threads`` contiguous ranges covering range(parts), run on torch's
    OpenMP threads; every range has finished when this returns or raises."""
    if threads <= 1:
        return [call(0, parts)]
    bounds = [parts * i // threads for i in range(threads + 1)]
    results = [0] * threads

    def run(part: int) -> None:
        results[part] = call(bounds[part], bounds[part + 1])

    failures: list[BaseException] = []
    key = next(_job_ids)
    _jobs[key] = (run, threads, failures)
    try:
        _openmp().GOMP_parallel(_callback, key, threads, 0)
    finally:
        del _jobs[key]
    if failures:
        raise failures[0]
    return results


def _merged(codes: list[int]) -> int:
    """The problem code of a split call: the score tensors' code (the same in every range),
    plus 4 when any range had a bad row."""
    return codes[0] % 4 + (4 if any(code >= 4 for code in codes) else 0)


def _over_rows(kernel: Callable, B: int, threads: int, args: tuple, sliced: str) -> int:
    """kernel(*args) over B rows on ``threads`` threads: the arguments marked "r" in
    ``sliced`` (one letter per argument, "." for shared ones) are cut to each thread's rows.
    Returns the kernel's problem code (merged over the threads)."""
    if threads == 1:  # the common small call: no slices, no closure
        return kernel(*args)

    def rows(lo: int, hi: int) -> int:
        return kernel(*(a[lo:hi] if cut == "r" else a for a, cut in zip(args, sliced)))

    return _merged(_split(B, threads, rows))
