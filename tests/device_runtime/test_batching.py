"""Dynamic batching: rows merged up to max_batch, bounded queue refusing at once when full."""
from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from edgeai_runtime.service.batching import Batcher, Overloaded


def run(coro):
    return asyncio.run(coro)


def blocking_backend():
    """A backend call that blocks its thread until the returned event is set (at most 5 s)."""
    release = threading.Event()

    def slow_infer(inputs):
        release.wait(5)
        return {"y": inputs["x"]}

    return release, slow_infer


def test_concurrent_requests_share_a_batch_and_get_their_own_rows():
    seen = []

    def infer(inputs):
        seen.append(len(inputs["x"]))
        return {"y": inputs["x"] * 2}

    async def main():
        with ThreadPoolExecutor(2) as pool:
            batcher = Batcher(infer, pool, max_batch=8, max_delay_s=0.05, max_queue=16)
            results = await asyncio.gather(*[batcher.submit({"x": np.full((1, 3), i, np.float32)}) for i in range(8)])
            batcher.close()
            return results

    results = run(main())
    # The first request finds nothing in flight and runs at once; the seven that arrive while
    # it runs are batched together.
    assert seen == [1, 7]
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result["y"], np.full((1, 3), 2 * i, np.float32))


def test_batches_never_exceed_max_batch_rows():
    seen = []

    def infer(inputs):
        seen.append(len(inputs["x"]))
        return {"y": inputs["x"]}

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(infer, pool, max_batch=4, max_delay_s=0.02, max_queue=32)
            await asyncio.gather(*[batcher.submit({"x": np.zeros((3, 2), np.float32)}) for i in range(5)])
            batcher.close()

    run(main())
    assert sum(seen) == 15 and max(seen) <= 4


def test_full_queue_is_refused_at_once_and_memory_stays_bounded():
    release, slow_infer = blocking_backend()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(slow_infer, pool, max_batch=1, max_delay_s=0, max_queue=2)
            first = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
            await asyncio.sleep(0.05)  # alone: runs at once and blocks the only backend thread
            queued = [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))]
            await asyncio.sleep(0.05)  # the worker takes it and waits for the backend thread
            queued += [asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))})) for i in range(2)]
            await asyncio.sleep(0.05)  # these two fill the queue
            with pytest.raises(Overloaded) as refused:
                await batcher.submit({"x": np.zeros((1, 1))})
            assert batcher.queue.qsize() == 2 and refused.value.retry_after >= 1
            release.set()
            await asyncio.gather(first, *queued)
            batcher.close()

    run(main())


def test_backend_error_reaches_every_request_of_the_batch():
    def broken(inputs):
        raise RuntimeError("device lost")

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(broken, pool, max_batch=4, max_delay_s=0.02, max_queue=8)
            results = await asyncio.gather(*[batcher.submit({"x": np.zeros((1, 1))}) for i in range(3)],
                                           return_exceptions=True)
            batcher.close()
            return results

    assert all(isinstance(r, RuntimeError) and "device lost" in str(r) for r in run(main()))


def test_a_lone_request_does_not_wait_out_the_delay():
    """With nothing else in flight there is nobody to batch with: run at once, not after max_delay."""
    def infer(inputs):
        return {"y": inputs["x"]}

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(infer, pool, max_batch=32, max_delay_s=0.5, max_queue=8)
            loop = asyncio.get_running_loop()
            started = loop.time()
            await batcher.submit({"x": np.zeros((1, 2), np.float32)})
            elapsed = loop.time() - started
            batcher.close()
            return elapsed

    assert run(main()) < 0.25


def test_close_fails_waiting_requests_instead_of_hanging():
    release, slow_infer = blocking_backend()

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = Batcher(slow_infer, pool, max_batch=1, max_delay_s=0, max_queue=4)
            alone = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
            await asyncio.sleep(0.05)  # nothing else in flight: runs at once, blocking the backend thread
            in_batch = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
            await asyncio.sleep(0.05)  # taken by the worker, waiting for the backend thread
            queued = asyncio.ensure_future(batcher.submit({"x": np.zeros((1, 1))}))
            await asyncio.sleep(0.05)
            batcher.close()
            failed = await asyncio.wait_for(asyncio.gather(in_batch, queued, return_exceptions=True), 2)
            release.set()
            return failed, await asyncio.wait_for(alone, 5)

    failed, alone = run(main())
    assert all(isinstance(r, RuntimeError) and "unloaded" in str(r) for r in failed), failed
    assert alone["y"].shape == (1, 1)  # the one already running on the backend finishes normally
