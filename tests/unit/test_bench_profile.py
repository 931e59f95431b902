"""bench/profile.py: a sampled stack is counted in exactly one stage, by the first rule that matches it."""

from __future__ import annotations

import dis

import pytest

from bench.profile import STAGES, markdown, stage_of, summarise
from pipeline.row_compiler import STRUCT_READ_PARSE_LINES, compile_struct_read
from pipeline.spec_loader import load_pipeline

LOOP = "thread (1): MainThread;<module> (microbatch:10);RunLoop.run (consumer/loop.py:132)"
WRITER = "thread (2): microbatch-write_0;Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:83)"


@pytest.mark.parametrize(
    ("stack", "stage"),
    [
        (f"{WRITER};WriterThread._write (consumer/writer_thread.py:126);Connection.wait (psycopg/connection.py:495)",
         "writer thread (flush transaction)"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Handover.hand_over (consumer/handover.py:81);"
         "Preparer.prepare (pipeline/prepare.py:42);Decoder.decode (pipeline/decode.py:186);"
         "row (<row reader of 7 fields>:18);fast (pipeline/field_types.py:268)", "field checks"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Decoder.decode (pipeline/decode.py:186);"
         "StructReader.read (pipeline/struct_reader.py:101);row (<struct row reader of 7 fields>:9)", "field checks"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Decoder.decode (pipeline/decode.py:186);"
         "StructReader.read (pipeline/struct_reader.py:101)", "JSON and decode loop"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Decoder.decode (pipeline/decode.py:171)", "JSON and decode loop"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Decoder.decode (pipeline/decode.py:186);"
         "Decoder._decode_numbered (pipeline/decode.py:197);read (<struct read of 7 fields>:5)",
         "JSON and decode loop"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Decoder.decode (pipeline/decode.py:186);"
         "Decoder._decode_numbered (pipeline/decode.py:197);read (<struct read of 7 fields>:6)", "field checks"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);CopyEncoder.encode (pipeline/copydata.py:63);"
         "BinaryFormatter.write_row (psycopg/_copy_base.py:289)", "COPY encoding"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:158);RunLoop._accept (consumer/loop.py:175);"
         "to_runs (consumer/messages.py:32)", "messages → records"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:158);RunLoop._accept (consumer/loop.py:192);"
         "Positions.accept (consumer/positions.py:119)", "window bookkeeping"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:155)", "Kafka consume() and the loop"),
        (f"{LOOP};RunLoop.step (consumer/loop.py:164);Handover.settle (consumer/handover.py:103)", "handover"),
        ("thread (3): Thread-1;BaseServer.serve_forever (socketserver.py:233)", "other"),
    ],
)  # fmt: skip
def test_each_stack_lands_in_its_stage(stack: str, stage: str) -> None:
    assert stage_of(stack.split(";")) == stage


def test_summary_counts_every_sample_once_and_converts_to_microseconds_per_event() -> None:
    lines = [
        f"{LOOP};RunLoop.step (consumer/loop.py:155) 30\n",
        f"{WRITER};WriterThread._write (consumer/writer_thread.py:126) 10\n",
        "thread (3): Thread-1;BaseServer.serve_forever (socketserver.py:233) 10\n",
        "\n",  # py-spy ends its output with a newline: not a sample
    ]
    summary = summarise(lines, events=1000, rate_hz=100)
    assert summary["samples"] == 50
    assert summary["sampled_us_per_event"] == 500.0  # 50 samples of 10 ms each, over 1,000 events
    stages = summary["stages"]
    assert list(stages) == [name for name, _ in STAGES]
    assert stages["Kafka consume() and the loop"] == {"share": 0.6, "us_per_event": 300.0}
    assert stages["writer thread (flush transaction)"]["us_per_event"] == 100.0
    assert stages["other"]["share"] == 0.2
    assert sum(stage["share"] for stage in stages.values()) == pytest.approx(1.0)


def test_the_report_section_lists_every_stage_or_says_why_there_is_none() -> None:
    summary = summarise([f"{LOOP};RunLoop.step (consumer/loop.py:155) 4\n"], events=10, rate_hz=100)
    summary["run"] = {"events_per_s": 5000, "cpu_us_per_event": {"consumer": 12.5}, "correct": True}
    text = "\n".join(markdown(summary))
    assert "| Kafka consume() and the loop | 100.0% | 12.50 |" in text  # the share of the measured CPU
    assert "used 12.5 µs of CPU per event" in text and "add up to 4000.0 µs" in text
    assert "verified" in text and "NOT verified" not in text
    assert markdown({}) == []
    assert "The profiled run failed: RuntimeError: py-spy" in "\n".join(markdown({"error": "RuntimeError: py-spy"}))


def test_the_parse_of_a_struct_read_function_is_on_the_line_the_profile_counts_as_parsing() -> None:
    read, _ = compile_struct_read(load_pipeline("invoices").fields)
    lines, line = set(), None
    for instruction in dis.get_instructions(read):
        line = instruction.starts_line or line
        if instruction.argval == "parse":
            lines.add(line)
    assert lines == {STRUCT_READ_PARSE_LINES}
