"""Property tests for wal_consumer.protocol.

(a) decode_message on arbitrary, truncated, extended and mutated bytes either returns a message
    or raises DecodeError -- never another exception, never a hang;
(b) the same for decode_copy_data;
(c) messages built by the small encoder below round-trip exactly;
(d) every hypothesis test runs under a deadline, so a slow path (e.g. a huge allocation from a
    corrupt count, or a loop that does not advance) fails the test instead of hanging.
"""

from __future__ import annotations

import json
import struct
from datetime import timedelta
from functools import cache
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wal_consumer.protocol import (
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
    Column,
    Commit,
    DecodeError,
    Delete,
    Insert,
    LogicalMessage,
    Origin,
    PgOutputMessage,
    PrimaryKeepalive,
    Relation,
    Truncate,
    TupleData,
    TupleValue,
    Type,
    Update,
    XLogData,
    decode_copy_data,
    decode_message,
    encode_standby_status,
    format_lsn,
    parse_lsn,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pgoutput_v1.json"

MESSAGE_TYPES = (
    Begin,
    Commit,
    Origin,
    Relation,
    Type,
    Insert,
    Update,
    Delete,
    Truncate,
    LogicalMessage,
)
TAGS = b"BCORYIUDTMSEcAbPKrpwkXZ\x00\xff"

FAST = settings(max_examples=2000, deadline=timedelta(milliseconds=200))
ROUND_TRIP = settings(max_examples=500, deadline=timedelta(milliseconds=200))
SLOW = settings(
    max_examples=300,
    deadline=timedelta(milliseconds=1000),
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@cache
def fixture_messages() -> tuple[bytes, ...]:
    data = json.loads(FIXTURE.read_text())
    return tuple(bytes.fromhex(m["hex"]) for m in data["messages"])


def small_fixture_messages() -> tuple[bytes, ...]:
    return tuple(m for m in fixture_messages() if len(m) <= 512)


def decodes_or_rejects(data: bytes) -> PgOutputMessage | None:
    """The property: a message of a known type, or DecodeError. Anything else propagates."""
    try:
        message = decode_message(data)
    except DecodeError as exc:
        # Every failure is detected by an explicit check with a precise message; the decoder's
        # last-resort conversion of stray exceptions ("malformed ...") is never needed.
        assert str(exc) and not str(exc).startswith("malformed"), exc
        return None
    assert isinstance(message, MESSAGE_TYPES)
    return message


def rejects(data: bytes) -> str:
    """decode_message must raise DecodeError with a precise message; return the message."""
    with pytest.raises(DecodeError) as info:
        decode_message(data)
    message = str(info.value)
    assert message and not message.startswith("malformed"), message
    return message


def copy_data_decodes_or_rejects(data: bytes) -> XLogData | PrimaryKeepalive | None:
    try:
        frame = decode_copy_data(data)
    except DecodeError as exc:
        assert str(exc)
        return None
    assert isinstance(frame, XLogData | PrimaryKeepalive)
    return frame


# ---------------------------------------------------------------------------------------------
# A small independent encoder (pgoutput v1 layout, as documented)


def enc_str(text: str) -> bytes:
    return text.encode() + b"\x00"


def enc_tuple(values: TupleData) -> bytes:
    out = [struct.pack(">h", len(values))]
    for v in values:
        if v is None:
            out.append(b"n")
        elif v is UNCHANGED_TOAST:
            out.append(b"u")
        elif isinstance(v, BinaryValue):
            out.append(b"b" + struct.pack(">i", len(v.data)) + v.data)
        else:
            assert isinstance(v, bytes)
            out.append(b"t" + struct.pack(">i", len(v)) + v)
    return b"".join(out)


def enc_insert(oid: int, new: TupleData) -> bytes:
    return b"I" + struct.pack(">I", oid) + b"N" + enc_tuple(new)


def enc_update(oid: int, old_kind: str | None, old: TupleData | None, new: TupleData) -> bytes:
    out = b"U" + struct.pack(">I", oid)
    if old_kind is not None:
        assert old is not None
        out += old_kind.encode() + enc_tuple(old)
    return out + b"N" + enc_tuple(new)


def enc_delete(oid: int, old_kind: str, old: TupleData) -> bytes:
    return b"D" + struct.pack(">I", oid) + old_kind.encode() + enc_tuple(old)


def enc_relation(rel: Relation) -> bytes:
    out = [
        b"R",
        struct.pack(">I", rel.oid),
        enc_str(rel.namespace),
        enc_str(rel.name),
        rel.replica_identity.encode(),
        struct.pack(">h", len(rel.columns)),
    ]
    for c in rel.columns:
        out += [bytes((c.flags,)), enc_str(c.name), struct.pack(">Ii", c.type_oid, c.type_modifier)]
    return b"".join(out)


def enc_truncate(msg: Truncate) -> bytes:
    n = len(msg.relation_oids)
    return b"T" + struct.pack(f">iB{n}I", n, msg.options, *msg.relation_oids)


def enc_logical_message(msg: LogicalMessage) -> bytes:
    head = b"M" + struct.pack(">BQ", int(msg.transactional), msg.lsn) + enc_str(msg.prefix)
    return head + struct.pack(">i", len(msg.content)) + msg.content


def filled(new: TupleData, old: TupleData | None) -> TupleData:
    """Expected decoder output: 'u' takes the old tuple's real value at the same index."""
    if old is None:
        return new
    return tuple(
        old[i]
        if v is UNCHANGED_TOAST and i < len(old) and isinstance(old[i], bytes | BinaryValue)
        else v
        for i, v in enumerate(new)
    )


u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
i32 = st.integers(-(2**31), 2**31 - 1)
pg_text = st.text(st.characters(exclude_categories=["Cs"], exclude_characters="\x00"))
values: st.SearchStrategy[TupleValue] = st.one_of(
    st.binary(max_size=64),
    st.none(),
    st.just(UNCHANGED_TOAST),
    st.builds(BinaryValue, st.binary(max_size=64)),
)
tuples = st.lists(values, max_size=40).map(tuple)


# ---------------------------------------------------------------------------------------------
# (a) decode_message never raises anything but DecodeError


@FAST
@given(st.binary(max_size=300))
def test_arbitrary_bytes(data: bytes) -> None:
    decodes_or_rejects(data)


@FAST
@given(st.sampled_from(TAGS), st.binary(max_size=300))
def test_arbitrary_body_after_a_known_tag(tag: int, body: bytes) -> None:
    decodes_or_rejects(bytes((tag,)) + body)


@FAST
@given(
    st.sampled_from(b"IUD"),
    u32,
    st.sampled_from(b"NKOx"),
    st.integers(-(2**15), 2**15 - 1),
    st.binary(max_size=200),
)
def test_tuple_headers_with_random_counts(
    tag: int, oid: int, kind: int, ncols: int, rest: bytes
) -> None:
    data = bytes((tag,)) + struct.pack(">IBh", oid, kind, ncols) + rest
    decodes_or_rejects(data)


def test_every_prefix_of_every_fixture_message_is_rejected() -> None:
    # pgoutput messages are self-delimiting: no proper prefix of a message is a message.
    for message in fixture_messages():
        assert decodes_or_rejects(message) is not None
        for end in range(len(message)):
            rejects(message[:end])


def test_every_fixture_message_with_trailing_bytes_is_rejected() -> None:
    for message in fixture_messages():
        for extra in (b"\x00", b"N", b"\xff" * 7):
            assert "trailing garbage" in rejects(message + extra)


def test_every_single_byte_change_of_small_fixture_messages() -> None:
    for message in small_fixture_messages():
        for pos in range(len(message)):
            for new in {0x00, 0x01, 0x7F, 0x80, 0xFF, message[pos] ^ 0x01, ord("u"), ord("n")}:
                decodes_or_rejects(message[:pos] + bytes((new,)) + message[pos + 1 :])


@SLOW
@given(
    st.sampled_from(fixture_messages()),
    st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(0, 255)), max_size=8),
)
def test_random_byte_flips_of_fixture_messages(
    message: bytes, flips: list[tuple[float, int]]
) -> None:
    data = bytearray(message)
    for where, value in flips:
        data[int(where * len(data))] = value
    decodes_or_rejects(bytes(data))


@SLOW
@given(
    st.sampled_from(fixture_messages()),
    st.floats(0, 1),
    st.floats(0, 1),
    st.binary(max_size=16),
)
def test_random_splices_of_fixture_messages(
    message: bytes, cut: float, resume: float, insert: bytes
) -> None:
    a, b = sorted((int(cut * len(message)), int(resume * len(message))))
    decodes_or_rejects(message[:a] + insert + message[b:])


# ---------------------------------------------------------------------------------------------
# (b) decode_copy_data likewise


@FAST
@given(st.binary(max_size=100))
def test_copy_data_arbitrary_bytes(data: bytes) -> None:
    copy_data_decodes_or_rejects(data)


@FAST
@given(st.sampled_from(b"wkr\x00"), st.binary(max_size=60))
def test_copy_data_known_tags(tag: int, body: bytes) -> None:
    frame = copy_data_decodes_or_rejects(bytes((tag,)) + body)
    if tag == ord("w") and len(body) >= 24:
        assert isinstance(frame, XLogData) and frame.payload == body[24:]
    if tag == ord("k") and len(body) == 17:
        assert isinstance(frame, PrimaryKeepalive)


@FAST
@given(u64, u64, st.integers(-(2**63), 2**63 - 1), st.binary(max_size=200))
def test_copy_data_xlogdata_round_trip(start: int, end: int, clock: int, payload: bytes) -> None:
    frame = b"w" + struct.pack(">QQq", start, end, clock) + payload
    assert decode_copy_data(frame) == XLogData(start, end, clock, payload)
    for cut in range(25):
        with pytest.raises(DecodeError):
            decode_copy_data(frame[:cut])


@FAST
@given(u64, st.integers(-(2**63), 2**63 - 1), st.booleans())
def test_copy_data_keepalive_round_trip(end: int, clock: int, reply: bool) -> None:
    frame = b"k" + struct.pack(">Qq?", end, clock, reply)
    assert decode_copy_data(frame) == PrimaryKeepalive(end, clock, reply)
    for cut in range(len(frame)):
        with pytest.raises(DecodeError):
            decode_copy_data(frame[:cut])


def test_copy_data_wrapping_every_fixture_message() -> None:
    for message in fixture_messages():
        frame = decode_copy_data(b"w" + struct.pack(">QQq", 1, 2, 3) + message)
        assert isinstance(frame, XLogData)
        assert decode_message(frame.payload) == decode_message(message)


# ---------------------------------------------------------------------------------------------
# (c) round trips through the encoder


@ROUND_TRIP
@given(u32, tuples)
def test_insert_round_trip(oid: int, new: TupleData) -> None:
    assert decode_message(enc_insert(oid, new)) == Insert(oid, new)


@ROUND_TRIP
@example(7, "O", (b"big", None), (UNCHANGED_TOAST, UNCHANGED_TOAST, UNCHANGED_TOAST))
@given(u32, st.sampled_from(["K", "O", None]), tuples, tuples)
def test_update_round_trip(oid: int, kind: str | None, old: TupleData, new: TupleData) -> None:
    old_or_none = None if kind is None else old
    decoded = decode_message(enc_update(oid, kind, old_or_none, new))
    assert decoded == Update(oid, kind, old_or_none, filled(new, old_or_none))
    assert isinstance(decoded, Update)
    for i, value in enumerate(decoded.new):
        if value is UNCHANGED_TOAST and old_or_none is not None and i < len(old_or_none):
            assert not isinstance(old_or_none[i], bytes | BinaryValue)


@ROUND_TRIP
@given(u32, st.sampled_from(["K", "O"]), tuples)
def test_delete_round_trip(oid: int, kind: str, old: TupleData) -> None:
    assert decode_message(enc_delete(oid, kind, old)) == Delete(oid, kind, old)


@ROUND_TRIP
@given(
    st.builds(
        Relation,
        u32,
        pg_text,
        pg_text,
        st.sampled_from("dnfi"),
        st.lists(st.builds(Column, st.integers(0, 255), pg_text, u32, i32), max_size=20).map(tuple),
    )
)
def test_relation_round_trip(rel: Relation) -> None:
    assert decode_message(enc_relation(rel)) == rel


@ROUND_TRIP
@given(st.builds(Truncate, st.integers(0, 255), st.lists(u32, max_size=50).map(tuple)))
def test_truncate_round_trip(msg: Truncate) -> None:
    assert decode_message(enc_truncate(msg)) == msg


@ROUND_TRIP
@given(st.builds(LogicalMessage, st.booleans(), u64, pg_text, st.binary(max_size=100)))
def test_logical_message_round_trip(msg: LogicalMessage) -> None:
    assert decode_message(enc_logical_message(msg)) == msg


@ROUND_TRIP
@given(u64, st.integers(-(2**63), 2**63 - 1), u32)
def test_begin_round_trip(lsn: int, clock: int, xid: int) -> None:
    assert decode_message(b"B" + struct.pack(">QqI", lsn, clock, xid)) == Begin(lsn, clock, xid)


@ROUND_TRIP
@given(st.integers(0, 255), u64, u64, st.integers(-(2**63), 2**63 - 1))
def test_commit_round_trip(flags: int, lsn: int, end: int, clock: int) -> None:
    data = b"C" + struct.pack(">BQQq", flags, lsn, end, clock)
    assert decode_message(data) == Commit(flags, lsn, end, clock)


@ROUND_TRIP
@given(u64, pg_text, pg_text)
def test_origin_and_type_round_trip(lsn: int, a: str, b: str) -> None:
    assert decode_message(b"O" + struct.pack(">Q", lsn) + enc_str(a)) == Origin(lsn, a)
    assert decode_message(b"Y" + struct.pack(">I", lsn >> 32) + enc_str(a) + enc_str(b)) == Type(
        lsn >> 32, a, b
    )


@ROUND_TRIP
@given(u32, tuples)
def test_prefixes_of_generated_messages_are_rejected(oid: int, new: TupleData) -> None:
    data = enc_update(oid, "O", new, new)
    for end in range(len(data)):
        rejects(data[:end])


@ROUND_TRIP
@given(u64)
def test_lsn_text_round_trip(lsn: int) -> None:
    assert parse_lsn(format_lsn(lsn)) == lsn
    assert parse_lsn(format_lsn(lsn).lower()) == lsn


@ROUND_TRIP
@given(st.text(max_size=20))
def test_parse_lsn_only_raises_value_error(text: str) -> None:
    try:
        lsn = parse_lsn(text)
    except ValueError:
        return
    assert 0 <= lsn < 2**64
    hi, lo = text.split("/")
    assert format_lsn(lsn) == f"{hi.upper().lstrip('0') or '0'}/{lo.upper().lstrip('0') or '0'}"


@ROUND_TRIP
@given(u64, u64, u64, st.integers(-(2**63), 2**63 - 1), st.booleans())
def test_standby_status_round_trip(w: int, f: int, a: int, now: int, reply: bool) -> None:
    data = encode_standby_status(w, f, a, now, reply)
    assert struct.unpack(">cQQQq?", data) == (b"r", w, f, a, now, reply)
