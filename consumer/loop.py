"""The run loop: consume → window → write, as a short sequence of steps on one thread.

One step (`RunLoop.step`), in order:
  1. beat (liveness);
  2. account for the write that ended, if any: its commits, its metrics, or its failure (`Handover`);
  3. reposition partitions whose stored position is unknown, or behind what this consumer wrote once
     the database connection was opened again (the server may have lost its latest commits: `Seeker`);
  4. consume a batch from Kafka (rebalance callbacks run inside: `Rebalance`);
  5. accept the records that belong in the window (`Positions.accept`), into the `Window`;
  6. write: retry what failed when its time has come, or hand a closed window over (`Handover`);
  7. housekeeping every few seconds (gauges, an idle database ping: `Housekeeping`; subscribed topics
     that do not exist: `TopicWatch`; a topic re-created under the consumer: `IncarnationWatch`).

Who may touch what is stated once, in consumer/writer_thread.py: the database only on the writer
thread; Kafka, the window, positions and metrics only on this one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from confluent_kafka import Consumer, Message
from confluent_kafka.admin import AdminClient

from consumer import collector
from consumer.consume_errors import KafkaRefused, before, sort_errors
from consumer.flow import FlowControl
from consumer.handover import EXIT_HALTED, Handover
from consumer.housekeeping import Housekeeping
from consumer.incarnations import IncarnationWatch
from consumer.log_facts import LogFacts
from consumer.messages import to_runs
from consumer.pending import Pending
from consumer.placement import Rules
from consumer.positions import Positions
from consumer.rebalance import Rebalance
from consumer.refusals import Refusals
from consumer.seeking import Seeker
from consumer.telemetry import Telemetry
from consumer.topic_watch import TopicWatch
from consumer.window import Trigger, Window, WindowPolicy
from consumer.writer_thread import WriterThread
from pipeline import failpoints
from pipeline.prepare import Preparer
from pipeline.rejects import RejectSink
from pipeline.target import Target

log = logging.getLogger("microbatch.loop")
EXIT_OK, EXIT_UNCLEAN = 0, 1
__all__ = ["EXIT_HALTED", "EXIT_OK", "EXIT_UNCLEAN", "KafkaRefused", "LoopOptions", "RunLoop"]
POLL_INTERVAL_S = 0.1
# Of shutdown_timeout_s, what is kept for leaving the group and closing the clients after the writes.
CLOSE_BUDGET_S = 3.0


@dataclass
class LoopOptions:
    """The run loop's knobs (see Settings for their meaning and defaults)."""

    topics: Sequence[str]
    policy: WindowPolicy
    group: str = ""  # named in errors only
    consume_batch: int = 1000
    placement: Rules = field(default_factory=Rules)
    shutdown_timeout_s: float = 30.0
    retry_initial_s: float = 0.2
    retry_max_s: float = 10.0
    halted_retry_s: float = 15.0
    exit_on_halt: bool = False
    overlap_writes: bool = True


class RunLoop:
    """Owns the loop; `run()` returns the process exit code."""

    def __init__(
        self,
        kafka: Consumer,
        preparer: Preparer,
        target: Target,
        sink: RejectSink,
        options: LoopOptions,
        *,
        admin: AdminClient,
        clock: Callable[[], float] = time.monotonic,
        telemetry: Telemetry | None = None,
    ) -> None:
        self.kafka, self.options, self.clock = kafka, options, clock
        self.telemetry = telemetry = telemetry or Telemetry()
        self.window = window = Window(options.policy, clock)
        self.positions = positions = Positions()
        pending, writer = Pending(), WriterThread(target, sink, health=telemetry.health)
        self.flow = flow = FlowControl(
            kafka, positions, telemetry, clock, retry_initial_s=options.retry_initial_s,
            retry_max_s=options.retry_max_s, halted_retry_s=options.halted_retry_s, exit_on_halt=options.exit_on_halt,
        )  # fmt: skip
        facts = LogFacts(admin, kafka)
        seeker = Seeker(kafka, writer, positions, facts=facts, rules=options.placement,
                        window=window, pending=pending, telemetry=telemetry, flow=flow, clock=clock)  # fmt: skip
        self.handover = Handover(kafka, preparer, writer, pending=pending, positions=positions, seeker=seeker,
                                 flow=flow, telemetry=telemetry, raw_table=target.spec.raw.table,
                                 clock=clock)  # fmt: skip
        self.seeker, self.writer, self.preparer = seeker, writer, preparer
        self.refusals = Refusals(positions, window=window, handover=self.handover, seeker=seeker, flow=flow)
        self.rebalance = Rebalance(self.handover, positions=positions, seeker=seeker, window=window, flow=flow,
                                   telemetry=telemetry)  # fmt: skip
        self.housekeeping = Housekeeping(kafka, writer, positions=positions, window=window, pending=pending, flow=flow,
                                         telemetry=telemetry, clock=clock)  # fmt: skip
        self.handover.on_commit = self.housekeeping.database_contacted
        self.topic_watch = TopicWatch(kafka, options.topics, telemetry, clock)
        self.incarnations = IncarnationWatch(admin, facts, positions=positions, seeker=seeker, handover=self.handover,
                                             flow=flow, clock=clock)  # fmt: skip
        flow.before_resume = self.incarnations.check_now
        if options.placement.needs_topic_id:  # rows stamped with the topic ID: each write's ID confirmed first
            self.handover.confirm = self.incarnations.confirm
        self._stopping = False

    def stop(self) -> None:
        """Ask the loop to finish (signal-handler safe): write what is buffered, commit, leave the group."""
        self._stopping = True

    def run(self) -> int:
        """Consume until stopped; returns EXIT_OK when everything buffered was written."""
        r = self.rebalance
        collector.settle()  # start-up is over: what exists now lives as long as the loop
        self.kafka.subscribe(list(self.options.topics), on_assign=r.on_assign, on_revoke=r.on_revoke,
                             on_lost=r.on_lost)  # fmt: skip
        try:
            while not self._stopping and self.handover.exit_code is None and not self.flow.should_exit:
                self.step()
            if self.flow.should_exit:
                return EXIT_HALTED
            return self.handover.exit_code if self.handover.exit_code is not None else self._shutdown()
        finally:
            self.handover.closing = True
            self.handover.settle()
            self.handover.advise()  # the last stored positions, before leaving the group (close() waits for it)
            self.kafka.close()
            self.writer.close()
            self.preparer.close()

    def step(self) -> None:
        """One turn of the loop (the numbered steps of the module docstring)."""
        self.telemetry.beat()  # 1.
        if self.writer.finished:  # 2.
            self.handover.settle()
        self.handover.apply_commits()
        self.refusals.act_on_due()  # errors held until the retry wrote what was read before them
        if not self.writer.busy:  # the database may have lost commits since the connection was last opened
            self.seeker.recheck_after_reconnect()
        if self.positions.unknown():  # 3. (a write in flight is accounted for first: its records stay dropped)
            self.handover.settle()
            self.seeker.seek_unknown()
        wanted = 1 if self.flow.waiting else min(self.options.consume_batch, self.window.room)
        messages = self.kafka.consume(wanted, self._poll_timeout())  # 4.
        if messages:
            failpoints.hit("after_consume")
        self._accept(messages)  # 5.
        if self.flow.waiting:  # 6.
            if self.flow.due():
                if len(self.window):  # read before the pause: written by the retry too, before anything resumes
                    self.handover.pending.add_window(self.window, self.handover.pending.trigger)
                self.handover.retry()
        elif (trigger := self.window.ready()) is not None:
            self.handover.pending.add_window(self.window, trigger)
            self.handover.hand_over(wait=not self.options.overlap_writes)
        self.housekeeping.tick()  # 7.
        self.topic_watch.tick()
        self.incarnations.tick()

    def _poll_timeout(self) -> float:
        if self.flow.waiting:
            return min(POLL_INTERVAL_S, self.flow.seconds_to_retry())
        left = self.window.time_left()
        return POLL_INTERVAL_S if left is None else min(POLL_INTERVAL_S, left)

    def _accept(self, messages: Sequence[Message]) -> None:
        runs, errors = to_runs(messages)
        sorted_errors = sort_errors(errors, self.options.topics, self.options.group)
        refused, unreadable = sorted_errors.refused, sorted_errors.unreadable
        if sorted_errors.unknown_topic:  # deleted, and maybe re-created: check its ID at once
            self.incarnations.soon()
        if unreadable:  # what was read before the batch that could not be is kept, and written before the halt
            runs = [(pid, before(run, unreadable[pid][0])) if pid in unreadable else (pid, run) for pid, run in runs]
        accepted = self.positions.accept(runs)
        self.telemetry.consumed(accepted, self.window.extend(accepted))
        if refused or unreadable:  # what was read before them is written first (consumer/refusals.py)
            self.refusals.act(sorted_errors)

    def _shutdown(self) -> int:
        """Write everything buffered within the deadline; EXIT_OK when it all got written. Every wait
        ends by the deadline (the watchdog of consumer/watchdog.py bounds what cannot be cut short)."""
        handover = self.handover
        handover.deadline = time.monotonic() + max(0.5, self.options.shutdown_timeout_s - CLOSE_BUDGET_S)
        handover.settle()
        if len(self.window):
            handover.pending.add_window(self.window, Trigger.SHUTDOWN)
        while handover.unwritten() and time.monotonic() < handover.deadline and not self._over():
            if self.flow.waiting and not self.flow.due():
                # Keep polling (group membership) but buffer nothing new: we are leaving.
                self.kafka.consume(1, min(POLL_INTERVAL_S, self.flow.seconds_to_retry()))
            elif self.flow.waiting:
                handover.retry()
            else:
                handover.hand_over(wait=True)
        if handover.exit_code is not None:
            return handover.exit_code
        if (unwritten := handover.unwritten()) or handover.cut:
            log.error("shutdown deadline passed with %d records unwritten; they will be re-read on restart",
                      unwritten + (1 if handover.cut else 0))  # fmt: skip
            return EXIT_UNCLEAN
        log.info("shut down cleanly: %d flushes, %d rows written, %d duplicates skipped", handover.flushes,
                 handover.written, handover.duplicates)  # fmt: skip
        return EXIT_OK

    def _over(self) -> bool:
        return self.handover.exit_code is not None or self.handover.cut or self.flow.should_exit
