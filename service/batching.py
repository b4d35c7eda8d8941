"""A LitServe loop that batches submissions without waiting for a batch to fill.

LitServe's batched loop polls its queue every millisecond until `batch_timeout` expires, which
costs CPU when idle and adds latency under light load. This loop blocks for the first request,
then takes whatever else is already queued (up to max_batch_size): one request alone goes
straight through, and under load many submissions share one database commit.
"""

from __future__ import annotations

import time
from queue import Empty

from litserve.loops.base import _SENTINEL_VALUE, _StopLoopError
from litserve.loops.simple_loops import BatchedLoop
from litserve.utils import LitAPIStatus, LoopResponseType


class GreedyBatchLoop(BatchedLoop):
    def get_batch_requests(self, lit_api, request_queue, transport):
        payloads: list = []
        timed_out: list = []
        try:
            item = request_queue.get(timeout=1.0)
        except Empty:
            return payloads, timed_out
        timeout = lit_api.request_timeout
        while True:
            if item == _SENTINEL_VALUE:
                raise _StopLoopError()
            response_queue_id, uid, timestamp, x_enc = item
            self.put_response(transport, response_queue_id, uid, (), LitAPIStatus.START,
                              LoopResponseType.REGULAR)
            if timeout not in (None, -1, False) and time.monotonic() - timestamp > timeout:
                timed_out.append((response_queue_id, uid))
            else:
                payloads.append((response_queue_id, uid, x_enc))
            if len(payloads) >= lit_api.max_batch_size:
                break
            try:
                item = request_queue.get_nowait()
            except Empty:
                break
        return payloads, timed_out
