"""The recorder: every event into PostgreSQL, exactly once in effect.

It consumes its own durable queue bound to the events exchange, gathers
events into batches, applies each batch in one transaction and acks only
after the commit. Applying is idempotent:

- each ``event_id`` is inserted into ``applied_events`` first; an id already
  there is skipped, so a redelivered event changes nothing;
- page rows are keyed by ``(job_id, page_no)`` and only move up the ranks
  retrying < failed < completed, so order of arrival does not matter;
- a job's counters are recomputed from its page rows, never incremented.

When a job's last page lands, the same transaction marks it finished; after
the commit the recorder writes ``result.md``/``result.json`` to S3 and emits
``JobCompleted`` with an event id derived from the job id, so a completion
sent twice (a crash between publish and bookkeeping) dedupes downstream. A
sweep at start and every few seconds finishes any job whose completion was not
published (the recorder died between commit and publish).

The modules, one concern each: :mod:`.prepare` (pure: parsing, page rows,
merging), :mod:`.sql` (the statements), :mod:`.apply` (one transaction),
:mod:`.batching` (the pipeline), :mod:`.finish` (results and ``JobCompleted``),
:mod:`.sweep` and :mod:`.service` (the process).
"""

from consumer.recorder.apply import apply_batch, apply_prepared, recorder_engine
from consumer.recorder.batching import GC_THRESHOLDS, collect_less_often, pipelined
from consumer.recorder.finish import ECHO_WAIT_S, FINISHING_AT_ONCE, Finisher
from consumer.recorder.prepare import (
    PAUSE_EVERY,
    PreparedBatch,
    merge_page_events,
    page_status,
    prepare_batch,
    prepare_bodies,
    prepare_events,
)
from consumer.recorder.service import Recorder, run
from consumer.recorder.sweep import Sweeper

__all__ = [
    "ECHO_WAIT_S",
    "FINISHING_AT_ONCE",
    "GC_THRESHOLDS",
    "PAUSE_EVERY",
    "Finisher",
    "PreparedBatch",
    "Recorder",
    "Sweeper",
    "apply_batch",
    "apply_prepared",
    "collect_less_often",
    "merge_page_events",
    "page_status",
    "pipelined",
    "prepare_batch",
    "prepare_bodies",
    "prepare_events",
    "recorder_engine",
    "run",
]
