"""Kafka messages whose header names are not UTF-8, produced through librdkafka's C API.

Kafka header names are bytes on the wire; the Java client writes UTF-8, but librdkafka (and Go,
Rust, C clients) send whatever bytes they are given. confluent-kafka's Python producer only takes
`str` names, so a test that needs such a message calls the librdkafka the confluent-kafka wheel
bundles, through ctypes: `rd_kafka_produceva` with one HEADER entry (rdkafka.h's rd_kafka_vu_t).
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import confluent_kafka

# rdkafka.h: rd_kafka_vtype_t and the flags used here.
_TOPIC, _PARTITION, _VALUE, _MSGFLAGS, _HEADER = 1, 3, 4, 7, 9
_MSG_F_COPY = 2
_PRODUCER = 0


class _Memory(ctypes.Structure):
    _fields_ = [("ptr", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class _Header(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("val", ctypes.c_void_p), ("size", ctypes.c_ssize_t)]


class _Value(ctypes.Union):
    _fields_ = [("cstr", ctypes.c_char_p), ("i32", ctypes.c_int32), ("i", ctypes.c_int), ("mem", _Memory),
                ("header", _Header), ("pad", ctypes.c_char * 64)]  # fmt: skip


class _VU(ctypes.Structure):
    _fields_ = [("vtype", ctypes.c_int), ("u", _Value)]


def _librdkafka() -> ctypes.CDLL:
    libs = Path(confluent_kafka.__file__).resolve().parent.parent / "confluent_kafka.libs"
    found = sorted(libs.glob("librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka under {libs}: the confluent-kafka wheel bundles one")
    lib = ctypes.CDLL(str(found[0]))
    lib.rd_kafka_conf_new.restype = ctypes.c_void_p
    text = ctypes.c_char_p
    lib.rd_kafka_conf_set.argtypes = [ctypes.c_void_p, text, text, text, ctypes.c_size_t]
    lib.rd_kafka_new.restype = ctypes.c_void_p
    lib.rd_kafka_new.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t]
    lib.rd_kafka_produceva.restype = ctypes.c_void_p
    lib.rd_kafka_produceva.argtypes = [ctypes.c_void_p, ctypes.POINTER(_VU), ctypes.c_size_t]
    lib.rd_kafka_error_string.restype = ctypes.c_char_p
    lib.rd_kafka_error_string.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_flush.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.rd_kafka_outq_len.argtypes = [ctypes.c_void_p]
    lib.rd_kafka_destroy.argtypes = [ctypes.c_void_p]
    return lib


def produce_with_header_name(
    bootstrap: str, topic: str, partition: int, value: bytes, name: bytes, header_value: bytes
) -> None:
    """Produce one message to `topic`[`partition`] with a header named by the raw bytes `name` (no NUL),
    and wait until the broker acknowledged it (acks=all, 30 s); RuntimeError otherwise."""
    lib = _librdkafka()
    errors = ctypes.create_string_buffer(512)
    conf = lib.rd_kafka_conf_new()
    for key, setting in ((b"bootstrap.servers", bootstrap.encode()), (b"acks", b"all")):
        if lib.rd_kafka_conf_set(conf, key, setting, errors, len(errors)) != 0:
            raise RuntimeError(errors.value.decode())
    rk = lib.rd_kafka_new(_PRODUCER, conf, errors, len(errors))
    if not rk:
        raise RuntimeError(errors.value.decode())
    try:
        payload, header = ctypes.create_string_buffer(value, len(value)), ctypes.create_string_buffer(header_value)
        entries = (_VU * 5)()
        entries[0].vtype, entries[0].u.cstr = _TOPIC, topic.encode()
        entries[1].vtype, entries[1].u.i32 = _PARTITION, partition
        entries[2].vtype = _VALUE
        entries[2].u.mem = _Memory(ctypes.cast(payload, ctypes.c_void_p), len(value))
        entries[3].vtype, entries[3].u.i = _MSGFLAGS, _MSG_F_COPY
        entries[4].vtype = _HEADER
        entries[4].u.header = _Header(name, ctypes.cast(header, ctypes.c_void_p), len(header_value))
        error = lib.rd_kafka_produceva(rk, entries, len(entries))
        if error:
            raise RuntimeError(f"produce refused: {lib.rd_kafka_error_string(error).decode()}")
        if lib.rd_kafka_flush(rk, 30_000) != 0 or lib.rd_kafka_outq_len(rk) != 0:
            raise RuntimeError("the message was not acknowledged within 30 s")
    finally:
        lib.rd_kafka_destroy(rk)
