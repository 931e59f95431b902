"""The rebalance callbacks: partitions assigned, revoked, or lost.

confluent-kafka calls them inside `consume()`, on the loop thread, between two steps of the loop.
They must never raise (the binding would then assign from Kafka's committed offsets, which are only
advisory here), so each one logs what it could not do and leaves the partition to be repositioned.
"""

from __future__ import annotations

import logging

from confluent_kafka import OFFSET_STORED, Consumer, TopicPartition

from consumer.flow import FlowControl
from consumer.handover import Handover
from consumer.positions import Positions
from consumer.seeking import Seeker, describe
from consumer.telemetry import Telemetry
from consumer.window import Trigger, Window
from pipeline import failpoints
from pipeline.errors import DatabaseFailure

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
                stored, known = self._seeker.stored(pids), True
                self._telemetry.database(ok=True)
            except DatabaseFailure as error:
                log.warning("assigned %d partition(s) while the database is unreachable (%s): paused", len(pids), error)
                stored, known = {}, False
                self._telemetry.database(ok=False)
            assigned = []
            for pid in pids:
                position = stored.get(pid)
                self._positions.assign(pid, position, known=known)
                offset = position if known and position is not None else OFFSET_STORED
                assigned.append(TopicPartition(pid[0], pid[1], offset))
            consumer.incremental_assign(assigned)
            if known:
                self._seeker.announce_kafka_starts([pid for pid in pids if stored.get(pid) is None])
            # librdkafka keeps a partition's pause flag across unassign/assign (and a pause racing a
            # rebalance can stick): state it explicitly for every partition we are given.
            if assigned and (self._flow.paused or not known):
                consumer.pause(assigned)
            elif assigned:
                consumer.resume(assigned)
            self._telemetry.rebalance("assign", len(self._positions))
            if pids:
                log.info("assigned %s", describe(pids, stored))
        except Exception:
            log.exception("on_assign failed; partitions will be re-read from PostgreSQL")

    def on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = {(tp.topic, tp.partition) for tp in partitions}
        try:
            failpoints.hit("in_revoke")
            self._handover.settle()
            if not self._handover.closing and not self._flow.waiting and self._window.partitions() & revoked:
                # Write what we have while we still own it (one attempt: no retries inside a rebalance).
                self._handover.write_now(self._window, Trigger.REVOKE)
            self._handover.release(self._window, revoked)
            self._telemetry.rebalance("revoke", len(self._positions))
            if revoked:
                log.info("revoked %s", describe(sorted(revoked), {}))
        except Exception:
            log.exception("on_revoke failed; the partitions' buffers were dropped")
            self._handover.release(self._window, revoked)

    def on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        try:
            self._handover.settle()
            pids = {(tp.topic, tp.partition) for tp in partitions}
            self._handover.release(self._window, pids)
            self._telemetry.rebalance("lost", len(self._positions))
            log.warning("lost %s (session expired): buffers dropped, nothing committed", describe(sorted(pids), {}))
        except Exception:
            log.exception("on_lost failed")
