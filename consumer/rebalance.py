"""The rebalance callbacks: partitions assigned, revoked, or lost.

confluent-kafka calls them inside `consume()`, on the loop thread, between two steps of the loop.
They must never raise (the binding would then assign from Kafka's committed offsets, which are only
advisory here), so each one logs what it could not do and leaves the partition to be repositioned.
"""

from __future__ import annotations

import contextlib
import logging

from confluent_kafka import Consumer, TopicPartition

from consumer.flow import FlowControl
from consumer.handover import Handover
from consumer.positions import Positions
from consumer.seeking import UNPLACED_OFFSET, Seeker, describe
from consumer.telemetry import Telemetry
from consumer.window import Trigger, Window
from pipeline import failpoints
from pipeline.errors import DatabaseFailure
from pipeline.offsets import PositionConflict

log = logging.getLogger("microbatch.loop")


class Rebalance:
    """`on_assign`, `on_revoke` and `on_lost` for `Consumer.subscribe`."""

    def __init__(
        self,
        handover: Handover,
        *,
        positions: Positions,
        seeker: Seeker,
        window: Window,
        flow: FlowControl,
        telemetry: Telemetry,
    ) -> None:
        self._handover = handover
        self._positions = positions
        self._seeker = seeker
        self._window = window
        self._flow = flow
        self._telemetry = telemetry

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            failpoints.hit("in_assign")
            self._handover.settle()
            pids = [(tp.topic, tp.partition) for tp in partitions]
            try:
                placements = self._seeker.place(pids)
                self._telemetry.database(ok=True)
            except (DatabaseFailure, PositionConflict) as error:
                log.warning("assigned %d partition(s) but cannot place them yet (%s): paused", len(pids), error)
                placements = {}
                self._telemetry.database(ok=not isinstance(error, DatabaseFailure))
            assigned, waiting = [], []
            for pid in pids:
                placement = placements.get(pid)
                start = placement.start if placement is not None and placement.halt is None else None
                topic_id = placement.topic_id if placement is not None else None
                # librdkafka asks the broker about a position's leader epoch on a seek, not on an assign:
                # a start with one is sought at the loop's next step (placed again), like an unplaced one.
                sought = start is not None and placement is not None and placement.leader_epoch is not None
                # Unknown until sought, but owned from `start` (where to read again if its row vanishes).
                self._positions.assign(pid, start, known=start is not None and not sought, topic_id=topic_id)
                start = None if sought else start
                # A partition not placed yet starts paused: nothing of it is read until it is placed.
                assigned.append(TopicPartition(pid[0], pid[1], start if start is not None else UNPLACED_OFFSET))
                if start is None:
                    waiting.append(TopicPartition(pid[0], pid[1]))
            consumer.incremental_assign(assigned)
            # librdkafka keeps a partition's pause flag across unassign/assign (and a pause racing a
            # rebalance can stick): state it explicitly for every partition we are given.
            if assigned and self._flow.paused:
                consumer.pause(assigned)
            elif assigned:
                consumer.resume([tp for tp in assigned if tp not in waiting])
                if waiting:
                    consumer.pause(waiting)
            for pid, placement in placements.items():
                if placement.halt is not None:
                    self._seeker.apply(pid, placement)
            self._telemetry.rebalance("assign", len(self._positions))
            if pids:
                log.info(
                    "assigned %s",
                    describe(pids, {pid: p.start for pid, p in placements.items() if p.start is not None}),
                )
        except Exception:
            log.exception("on_assign failed; the partitions are paused and will be placed again")
            # Own them, unplaced: step 3 of the loop places them. Assigned here at an absolute offset:
            # left unassigned, the binding would assign them at Kafka's committed offsets (a lookup).
            for tp in partitions:  # whatever this callback had decided for them
                self._positions.assign((tp.topic, tp.partition), None, known=False)
            with contextlib.suppress(Exception):  # fails for partitions assigned before the error: they are
                consumer.incremental_assign(  # then at their placed or unplaced offset already
                    [TopicPartition(tp.topic, tp.partition, UNPLACED_OFFSET) for tp in partitions]
                )
            with contextlib.suppress(Exception):
                consumer.pause(partitions)

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        try:
            failpoints.hit("in_revoke")
            self._handover.settle()
            if not self._handover.closing and not self._flow.waiting and self._window.partitions() & revoked:
                # Write what we have while we still own it (one attempt: no retries inside a rebalance).
                self._handover.write_now(self._window, Trigger.REVOKE)
            self._handover.release(self._window, revoked)
            self._seeker.released(revoked)
            self._telemetry.rebalance("revoke", len(self._positions))
            if revoked:
                log.info("revoked %s", describe(sorted(revoked), {}))
        except Exception:
            log.exception("on_revoke failed; the revoked partitions' buffers were dropped")
            self._handover.release(self._window, revoked)
            self._seeker.released(revoked)
            if self._handover.pending.records and not self._flow.waiting:
                self._flow.retry_now()  # the kept partitions' records: written after the callback

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._handover.settle()
            pids = {(tp.topic, tp.partition) for tp in partitions}
            self._handover.release(self._window, pids)
            self._seeker.released(pids)
            self._telemetry.rebalance("lost", len(self._positions))
            log.warning("lost %s (session expired): buffers dropped, nothing committed", describe(sorted(pids), {}))
        except Exception:
            log.exception("on_lost failed; the partitions' buffers were dropped")
            self._handover.release(self._window, {(tp.topic, tp.partition) for tp in partitions})
            self._seeker.released({(tp.topic, tp.partition) for tp in partitions})
