"""The CPU GEMV path's handling of numpy's BLAS threads, which belong to the whole process."""

from __future__ import annotations

import contextlib
import threading

import numpy as np
import torch
from threadpoolctl import ThreadpoolController, threadpool_limits

from retriever.relevance import _CpuPool, gemv_blocks


def single_threaded_blas() -> contextlib.AbstractContextManager[None]:
    """The section every CPU GEMV runs inside: numpy's BLAS single-threaded while any caller is in it."""
    return _CpuPool.single_blas()


def blas_threads() -> list[int]:
    return [lib.num_threads for lib in ThreadpoolController().select(user_api="blas").lib_controllers]


def test_overlapping_calls_restore_the_process_blas_threads() -> None:
    """Two calls whose single-threaded sections overlap (A in, B in, A out, B out) leave BLAS as found."""
    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        assert before and all(n == 2 for n in before)
        a, b = single_threaded_blas(), single_threaded_blas()
        a.__enter__()
        b.__enter__()
        assert all(n == 1 for n in blas_threads())
        a.__exit__(None, None, None)
        assert all(n == 1 for n in blas_threads()), "B is still inside: BLAS must stay single-threaded"
        b.__exit__(None, None, None)
        assert blas_threads() == before


def test_concurrent_searches_get_right_answers_and_leave_blas_alone() -> None:
    rng = np.random.default_rng(3)
    blocks = [torch.from_numpy(rng.normal(size=(3000, 16)).astype(np.float32)) for _ in range(4)]
    qs = [torch.from_numpy(rng.normal(size=16).astype(np.float32)) for _ in range(8)]
    want = [torch.cat([b @ q for b in blocks]).numpy() for q in qs]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for _ in range(5):
                got = gemv_blocks(blocks, qs[i], min_split_rows=0).numpy()
                np.testing.assert_allclose(got, want[i], rtol=1e-5, atol=1e-5)
        except BaseException as e:  # re-raised in the main thread below
            errors.append(e)

    with threadpool_limits(limits=2, user_api="blas"):
        before = blas_threads()
        threads = [threading.Thread(target=work, args=(i,)) for i in range(len(qs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        assert blas_threads() == before
