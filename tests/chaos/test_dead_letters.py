"""T15 (a message too large for the dead-letter producer) and T16 (the dead-letter topic deleted mid-run,
then re-created): the dead-letter path must never crash the consumer, nor skip a message."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource
from confluent_kafka.cimpl import NewTopic

from devstack.verify import read_topic, stored_positions
from tests.chaos.conftest import StreamFactory
from tests.support.chaos import Scenario, iterations
from tests.support.dead_letters import produce_recorded
from tests.support.kafka_io import halted
from tests.support.services import wait_until
from tests.support.user_paths import delete_topics


@pytest.mark.scenario("T15 a 2 MB message on a topic that allows 4 MB")
def test_t15_a_message_too_large_for_the_dead_letter_producer(make_stream: StreamFactory, scenario: Scenario) -> None:
    rounds = iterations(quick=1, full=3)
    stream = make_stream()
    # The source topic takes 4 MB messages; the dead-letter producer sends at most 1 MB.
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})
    entry = ConfigEntry("max.message.bytes", "4194304", incremental_operation=AlterConfigOpType.SET)
    resource = ConfigResource("topic", stream.topic, incremental_configs=[entry])
    admin.incremental_alter_configs([resource])[resource].result(timeout=30)
    consumer = stream.consumer()
    for n in range(rounds):
        stream.produce(4000, seed=150 + n, rate=3000, background=True)
        stream.wait_progress()
        stream.ensure_load(seed=160 + n)
        huge = b'{"event_id": "' + b"9" * 2_000_000 + b'"}'

        def send_huge(partition: int = n % stream.partitions, huge: bytes = huge) -> None:
            stream.extra_entries += produce_recorded(
                stream.bootstrap, stream.topic, [(partition, "truncated_json", (b"huge", huge, [("trace", b"t")]))]
            )

        stream.inject(send_huge)  # judged live just before it, after new work arrived if the consumer caught up
    stream.recover()
    assert consumer.running(), "the consumer crashed on a message too large to dead-letter"
    assert consumer.terminate() == 0
    stream.verdict()
    omitted = [r for r in read_topic(stream.bootstrap, stream.dead_letter_topic) if r.headers.get("dlq.value.omitted")]
    scenario.notes.append(f"{len(omitted)} dead letters sent without their value (size and sha256 instead)")
    assert len(omitted) == rounds
    scenario.check(min_faults=rounds)


@pytest.mark.scenario("T16 dead-letter topic deleted mid-run, then re-created")
def test_t16_dead_letter_topic_deleted_and_re_created(make_stream: StreamFactory, scenario: Scenario) -> None:
    stream = make_stream()
    stream.produce(3000, seed=170, rate=2000, bad_ratio=0, background=True)  # nothing to dead-letter yet
    consumer = stream.consumer()
    stream.wait_progress()
    delete_topics(stream.bootstrap, stream.dead_letter_topic)
    stream.produce(4000, seed=171, rate=2000, bad_ratio=0.05, background=True)
    wait_until(lambda: halted(consumer), timeout=90, what="the consumer to halt on the missing dead-letter topic")
    assert consumer.running(), "the consumer crashed when its dead-letter topic disappeared"
    # The fault hits when a dead letter finds no topic: judged then, with the stream still produced (before,
    # it was judged before the deletion, where a consumer that had caught up made it look idle).
    live = stream.under_load()
    stream.wait_produced()
    # The fault lasts while the stream is produced: nothing moves past an undelivered dead letter.
    halted_at = stored_positions(stream.database_url, stream.group)
    holds_until = time.monotonic() + 3  # the fault's duration, not a synchronisation
    while time.monotonic() < holds_until:
        assert stored_positions(stream.database_url, stream.group) == halted_at, "positions moved while halted"
        time.sleep(0.5)
    topic = stream.dead_letter_topic
    admin = AdminClient({"bootstrap.servers": stream.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
    scenario.fault(live=live)
    stream.fault_ended()
    scenario.recovery_from = "the re-created dead-letter topic (the operator's repair)"
    stream.recover()
    assert consumer.terminate() == 0
    halts = [line for line in consumer.output().splitlines() if "halted:" in line]
    scenario.notes.append(halts[0].split("halted: ", 1)[1][:120] if halts else "no halt line")
    assert halts, "the halt names the dead-letter topic"
    stream.verdict(copies_allowed=2)
    scenario.check()
