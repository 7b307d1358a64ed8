"""Dynamic batching: requests for one loaded version are merged into batches of up to
``max_batch`` rows, waiting at most ``max_delay`` for a batch to fill, through a bounded
queue. A full queue is refused at once (the service answers 503 with Retry-After), so
memory never grows without bound.
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional

import numpy as np

from edgeai_runtime.format.errors import EdgeAIError

Infer = Callable[[Mapping[str, np.ndarray]], Dict[str, np.ndarray]]

#: A lone request whose backend call takes less than this runs on the event loop itself.
INLINE_S = 0.0005


class Overloaded(EdgeAIError):
    """The queue is full; retry after ``retry_after`` seconds."""

    default_reason = "overloaded"

    def __init__(self, retry_after: int = 1) -> None:
        super().__init__("request queue is full")
        self.retry_after = retry_after


@dataclass
class _Request:
    inputs: Mapping[str, np.ndarray]
    rows: int
    future: "asyncio.Future[Dict[str, np.ndarray]]"


def merge(requests: List[_Request]) -> Dict[str, np.ndarray]:
    if len(requests) == 1:
        return dict(requests[0].inputs)
    return {name: np.concatenate([r.inputs[name] for r in requests], axis=0) for name in requests[0].inputs}


def split(outputs: Mapping[str, np.ndarray], requests: List[_Request]) -> List[Dict[str, np.ndarray]]:
    if len(requests) == 1:
        return [dict(outputs)]
    parts: List[Dict[str, np.ndarray]] = []
    start = 0
    for request in requests:
        parts.append({name: value[start:start + request.rows] for name, value in outputs.items()})
        start += request.rows
    return parts


class Batcher:
    def __init__(self, infer: Infer, executor: Executor, max_batch: int, max_delay_s: float, max_queue: int,
                 on_batch: Optional[Callable[[int], None]] = None) -> None:
        self.infer = infer
        self.executor = executor
        self.max_batch = max(1, max_batch)
        self.max_delay_s = max(0.0, max_delay_s)
        self.queue: "asyncio.Queue[_Request]" = asyncio.Queue(maxsize=max(1, max_queue))
        self.on_batch = on_batch
        self._carry: Optional[_Request] = None
        self._outstanding = 0  # submitted and not answered yet: who could still join a batch
        self._infer_s = float("inf")  # moving average of one backend call; unknown until measured
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def submit(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        rows = int(next(iter(inputs.values())).shape[0]) if inputs else 1
        if self._outstanding == 0 and self._carry is None and self.queue.empty():
            return await self._run_alone(inputs, rows)
        future: "asyncio.Future[Dict[str, np.ndarray]]" = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait(_Request(inputs, rows, future))
        except asyncio.QueueFull:
            raise Overloaded(retry_after=1) from None
        self._outstanding += 1
        try:
            return await future
        finally:
            self._outstanding -= 1

    async def _run_alone(self, inputs: Mapping[str, np.ndarray], rows: int) -> Dict[str, np.ndarray]:
        """Nothing else is in flight, so there is nobody to batch with: skip the queue.

        Inferences measured to take less than ``INLINE_S`` run right on the event loop
        (a thread hop would cost more than the inference); longer ones in the executor.
        """
        self._outstanding += 1
        try:
            if self._infer_s < INLINE_S:
                started = time.perf_counter()
                outputs = self.infer(inputs)
                self._observe(time.perf_counter() - started)
            else:
                outputs = await asyncio.get_running_loop().run_in_executor(self.executor, self._timed_infer, inputs)
            if self.on_batch:
                self.on_batch(rows)
            return outputs
        finally:
            self._outstanding -= 1

    def _timed_infer(self, inputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        started = time.perf_counter()
        try:
            return self.infer(inputs)
        finally:
            self._observe(time.perf_counter() - started)

    def _observe(self, seconds: float) -> None:
        """Moving average of the backend's time per call (starts pessimistic: executor first)."""
        self._infer_s = seconds if self._infer_s == float("inf") else 0.8 * self._infer_s + 0.2 * seconds

    @property
    def idle(self) -> bool:
        return self._outstanding == 0

    def close(self) -> None:
        """Stop the worker; anything still waiting gets an error instead of waiting forever."""
        self._task.cancel()
        pending = [self._carry] if self._carry else []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        self._carry = None
        for request in pending:
            if not request.future.done():
                request.future.set_exception(RuntimeError("the model version was unloaded"))

    async def _next_batch(self) -> List[_Request]:
        first = self._carry or await self.queue.get()
        self._carry = None
        batch, rows = [first], first.rows
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_delay_s
        while rows < self.max_batch:
            try:
                nxt = self.queue.get_nowait()
            except asyncio.QueueEmpty:
                if self._outstanding <= len(batch):
                    break  # every request in flight is already in this batch: waiting gains nothing
                timeout = deadline - loop.time()
                if timeout <= 0:
                    break
                try:
                    nxt = await asyncio.wait_for(self.queue.get(), timeout)
                except asyncio.TimeoutError:
                    break
            if rows + nxt.rows > self.max_batch:
                self._carry = nxt  # starts the next batch
                break
            batch.append(nxt)
            rows += nxt.rows
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            batch = [r for r in batch if not r.future.cancelled()]
            if not batch:
                continue
            try:
                outputs = await loop.run_in_executor(self.executor, self._timed_infer, merge(batch))
                if self.on_batch:
                    self.on_batch(sum(r.rows for r in batch))
                for request, part in zip(batch, split(outputs, batch)):
                    if not request.future.done():
                        request.future.set_result(part)
            except asyncio.CancelledError:  # closed mid-batch: nobody may be left waiting
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(RuntimeError("the model version was unloaded"))
                raise
            except Exception as exc:  # the backend failed: every request of the batch gets the error
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(exc)
