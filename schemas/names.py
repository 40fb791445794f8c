"""Names of exchanges, queues and headers, and the queue arguments they carry.

Every process declares this topology idempotently at start. All names hang off
one prefix (``PAGEWIRE_PREFIX``) so two deployments can share a broker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

JOB_ROUTING_KEY = "job"
TASK_ROUTING_KEY = "task"
HIGH_TASK_ROUTING_KEY = "task.high"
HIGH_PRIORITY = 5
"""Jobs with ``priority`` at or above this go to the high lane, ahead of every normal task."""
CONTENT_TYPE = "application/json"

# Headers pagewire sets or reads.
HEADER_TYPE = "x-pagewire-type"
HEADER_JOB_ID = "x-pagewire-job-id"
HEADER_ERROR_CODE = "x-pagewire-error-code"
HEADER_ERROR = "x-pagewire-error"
HEADER_DELIVERY_COUNT = "x-delivery-count"  # set by quorum queues on redelivery
HEADER_DEATH = "x-death"
# Set on a dead-lettered copy: the queue it came from and the deliveries it had.
HEADER_QUEUE = "x-pagewire-queue"
HEADER_ATTEMPTS = "x-pagewire-attempts"


@dataclass(frozen=True)
class Topology:
    """Exchange and queue names for one prefix."""

    prefix: str = "pagewire"
    delivery_limit: int = 4

    @property
    def jobs_exchange(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def jobs_queue(self) -> str:
        return f"{self.prefix}.jobs"

    @property
    def tasks_exchange(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def tasks_queue(self) -> str:
        return f"{self.prefix}.tasks"

    @property
    def tasks_high_queue(self) -> str:
        """The high-priority lane: quorum queues of RabbitMQ 3.10 have no priorities, so a second queue."""
        return f"{self.prefix}.tasks.high"

    @property
    def events_exchange(self) -> str:
        return f"{self.prefix}.events"

    @property
    def recorder_queue(self) -> str:
        return f"{self.prefix}.recorder"

    @property
    def control_exchange(self) -> str:
        """Fanout of steering messages (``JobCancelled``) to every planner and worker."""
        return f"{self.prefix}.control"

    @property
    def dead_exchange(self) -> str:
        return f"{self.prefix}.dlx"

    @property
    def dead_queue(self) -> str:
        return f"{self.prefix}.dead"

    @property
    def recorder_dead_queue(self) -> str:
        """The recorder's own copy of every dead-lettered message (the dead exchange is a fanout).

        Tasks and job requests the broker gave up on end their pages or job here, while
        ``dead_queue`` keeps its copy for ``pagewire dead``.
        """
        return f"{self.prefix}.recorder.dead"

    def work_queue_arguments(self) -> dict[str, Any]:
        """Quorum queue with a delivery limit that dead-letters, at least once."""
        return {
            "x-queue-type": "quorum",
            "x-delivery-limit": self.delivery_limit,
            "x-dead-letter-exchange": self.dead_exchange,
            "x-dead-letter-strategy": "at-least-once",
            "x-overflow": "reject-publish",
        }

    def dead_queue_arguments(self) -> dict[str, Any]:
        """Quorum, and no dead-lettering of their own: a dead letter must not go round the fanout again."""
        return {"x-queue-type": "quorum"}
