"""Cancelled jobs, as a role learns of them from the control exchange.

``pagewire cancel`` publishes ``JobCancelled`` twice: to the events exchange,
where the recorder marks the job ``cancelled`` and subscribers see it, and to
the control exchange, which every running planner and worker hears on a
private queue. Those keep the ids in memory and skip the job's work from the
next page on. A role started after the cancel does not know of it and may read
pages of the job; the recorder keeps the row ``cancelled`` all the same.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

from aio_pika.abc import AbstractIncomingMessage, AbstractRobustConnection

from schemas.errors import PermanentError
from schemas.messages import JobCancelled, parse_event
from schemas.names import Topology

log = logging.getLogger(__name__)


class CancelledJobs:
    """The most recent cancelled job ids (bounded, oldest forgotten first)."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def add(self, job_id: str) -> None:
        self._ids[job_id] = None
        self._ids.move_to_end(job_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __contains__(self, job_id: object) -> bool:
        return job_id in self._ids

    async def listen(self, connection: AbstractRobustConnection, topology: Topology) -> None:
        """Bind a private queue to the control exchange and record every cancel heard on it."""
        channel = await connection.channel()
        exchange = await channel.get_exchange(topology.control_exchange)
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        await queue.bind(exchange)

        async def on_message(message: AbstractIncomingMessage) -> None:
            async with message.process(ignore_processed=True):
                try:
                    event = parse_event(message.body)
                except PermanentError as exc:
                    log.warning("ignored a control message: %s", exc)
                    return
                if isinstance(event, JobCancelled):
                    self.add(event.job_id)
                    log.info("job %s cancelled: skipping its remaining work", event.job_id)

        await queue.consume(on_message)
