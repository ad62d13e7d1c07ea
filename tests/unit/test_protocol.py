"""Unit tests for wal_consumer.protocol, mostly on real pgoutput bytes.

The bytes come from tests/fixtures/pgoutput_v1.json, captured from PostgreSQL 15 by
tests/fixtures/capture_pgoutput.py; see the "groups" there for the statements behind them.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import struct
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from wal_consumer.protocol import (
    UNCHANGED_TOAST,
    Begin,
    BinaryValue,
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
    UnchangedToast,
    Update,
    XLogData,
    decode_copy_data,
    decode_message,
    encode_standby_status,
    format_lsn,
    now_pg_us,
    parse_lsn,
    pg_time_to_datetime,
)

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "pgoutput_v1.json"

CLASS_BY_TAG: dict[str, type] = {
    "B": Begin,
    "C": Commit,
    "O": Origin,
    "R": Relation,
    "Y": Type,
    "I": Insert,
    "U": Update,
    "D": Delete,
    "T": Truncate,
    "M": LogicalMessage,
}

# What each statement group of the capture script must produce, in stream order.
EXPECTED_GROUPS = [
    ("initial_inserts", "BRIIYRIRIC"),
    ("update_full_identity_toast_unchanged", "BUC"),
    ("update_default_identity", "BUC"),
    ("update_key_change", "BUC"),
    ("delete_default_identity", "BDC"),
    ("delete_full_identity", "BDC"),
    ("truncate", "BRRTC"),  # TRUNCATE invalidates the relation cache: Relations re-sent
    ("message_transactional", "BMC"),
    ("message_nontransactional", "M"),
    ("insert_with_origin", "BORIC"),
    ("alter_table_add_column", ""),
    ("insert_after_alter", "BRIC"),
]

ACCOUNTS_COLUMNS = ["id", "name", "balance", "updated_at", "meta", "active", "note", "bio"]
ACCOUNTS_TYPES = [23, 25, 1700, 1184, 3802, 16, 25, 25]  # int4 text numeric timestamptz jsonb..


@cache
def fixture() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(FIXTURE.read_text())
    return data


def entries(group: str | None = None) -> list[dict[str, Any]]:
    return [m for m in fixture()["messages"] if group is None or m["group"] == group]


def raw(entry: dict[str, Any]) -> bytes:
    return bytes.fromhex(entry["hex"])


def decoded(group: str) -> list[PgOutputMessage]:
    return [decode_message(raw(e)) for e in entries(group)]


def only(group: str, cls: type[Any]) -> Any:
    found = [m for m in decoded(group) if isinstance(m, cls)]
    assert len(found) == 1, found
    return found[0]


def relations(group: str) -> list[Relation]:
    return [m for m in decoded(group) if isinstance(m, Relation)]


def relation(name: str, group: str = "initial_inserts") -> Relation:
    (rel,) = [r for r in relations(group) if r.name == name]
    return rel


def big_body() -> bytes:
    insert = [m for m in decoded("initial_inserts") if isinstance(m, Insert)]
    body = next(m.new[2] for m in insert if m.relation_oid == relation("docs").oid)
    assert isinstance(body, bytes)
    return body


def encode_tuple(values: TupleData) -> bytes:
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


def update_msg(old_kind: bytes | None, old: TupleData, new: TupleData, oid: int = 7) -> bytes:
    head = b"U" + struct.pack(">I", oid)
    if old_kind is not None:
        head += old_kind + encode_tuple(old)
    return head + b"N" + encode_tuple(new)


# ---------------------------------------------------------------------------------------------
# The captured stream


def test_fixture_was_captured_from_postgres_15() -> None:
    assert fixture()["server_version"].startswith("15.")
    assert fixture()["plugin_options"]["proto_version"] == "1"


def test_every_fixture_message_decodes_to_the_class_of_its_tag() -> None:
    assert len(entries()) > 30
    for entry in entries():
        data = raw(entry)
        message = decode_message(data)
        assert type(message) is CLASS_BY_TAG[chr(data[0])], entry


def test_message_types_per_statement_group() -> None:
    groups = [g["name"] for g in fixture()["groups"]]
    assert groups == [name for name, _ in EXPECTED_GROUPS]
    for name, expected in EXPECTED_GROUPS:
        tags = "".join(
            next(t for t, c in CLASS_BY_TAG.items() if isinstance(m, c)) for m in decoded(name)
        )
        assert tags == expected, name


def test_begin_and_commit_agree() -> None:
    messages = [(e, decode_message(raw(e))) for e in entries()]
    begins = [(e, m) for e, m in messages if isinstance(m, Begin)]
    commits = [(e, m) for e, m in messages if isinstance(m, Commit)]
    assert len(begins) == len(commits) == 10
    for (b_entry, begin), (c_entry, commit) in zip(begins, commits, strict=True):
        assert isinstance(begin, Begin) and isinstance(commit, Commit)
        assert begin.final_lsn == commit.commit_lsn
        assert commit.end_lsn > commit.commit_lsn
        assert commit.flags == 0
        assert begin.commit_time == commit.commit_time
        assert str(begin.xid) == b_entry["xid"] == c_entry["xid"]
        # pg_logical_slot_peek_binary_changes reports a commit at the end of its record.
        assert c_entry["lsn"] == format_lsn(commit.end_lsn)
        assert pg_time_to_datetime(commit.commit_time).year >= 2024


def test_relation_of_default_identity_table() -> None:
    accounts = relation("accounts")
    assert accounts.namespace == "public"
    assert accounts.replica_identity == "d"
    assert [c.name for c in accounts.columns] == ACCOUNTS_COLUMNS
    assert [c.type_oid for c in accounts.columns] == ACCOUNTS_TYPES
    assert [c.is_key for c in accounts.columns] == [True] + [False] * 7
    typmods = {c.name: c.type_modifier for c in accounts.columns}
    assert typmods["balance"] == ((12 << 16) | 2) + 4  # numeric(12, 2)
    assert typmods["name"] == -1


def test_relation_of_full_identity_table_and_enum_type() -> None:
    docs = relation("docs")
    assert docs.replica_identity == "f"
    assert [c.name for c in docs.columns] == ["id", "title", "body", "mood"]
    assert all(c.is_key for c in docs.columns)  # FULL: every column is part of the identity
    mood = only("initial_inserts", Type)
    assert (mood.namespace, mood.name) == ("public", "mood")
    assert mood.oid >= 16384  # user-defined
    assert docs.columns[3].type_oid == mood.oid
    messages = decoded("initial_inserts")
    assert messages[messages.index(mood) + 1] == docs  # a Type precedes the Relation using it


def test_initial_inserts_values() -> None:
    inserts = [m for m in decoded("initial_inserts") if isinstance(m, Insert)]
    alice, bob, doc, scratch = inserts
    accounts_oid = relation("accounts").oid
    assert alice.relation_oid == bob.relation_oid == accounts_oid
    assert alice.new[:7] == (
        b"1",
        b"alice",
        b"1234.50",
        b"2024-05-06 07:08:09.123456+00",
        b'{"a": [1, 2, {"b": null}]}',
        b"t",
        None,
    )
    assert isinstance(alice.new[7], bytes) and len(alice.new[7]) > 8000
    assert bob.new == (
        b"2",
        b"bob",
        b"-0.01",
        b"1999-12-31 23:59:59+00",
        b"[]",
        b"f",
        None,
        b"short",
    )
    assert doc.relation_oid == relation("docs").oid
    assert doc.new[:2] == (b"1", b"first") and doc.new[3] == b"happy"
    assert len(big_body()) > 8000
    assert scratch.new == (b"1", b"s1")


def test_unchanged_toast_is_filled_from_old_tuple() -> None:
    (entry,) = [e for e in entries("update_full_identity_toast_unchanged") if e["hex"][:2] == "55"]
    data = raw(entry)
    body = big_body()
    # The value travels once (in the old tuple); the new tuple carries the 'u' marker.
    assert data.count(body) == 1 and len(data) < 2 * len(body)
    update = decode_message(data)
    assert isinstance(update, Update)
    assert update.relation_oid == relation("docs").oid
    assert update.old_kind == "O"
    assert update.old == (b"1", b"first", body, b"happy")
    assert update.new == (b"1", b"second", body, b"ok")
    assert update.new[2] == body


def test_default_identity_update_has_no_old_tuple() -> None:
    update = only("update_default_identity", Update)
    assert update.old_kind is None and update.old is None
    assert update.new[:6] == (
        b"1",
        b"alice",
        b"99.99",
        b"2024-05-06 07:08:09.123456+00",
        b'{"a": [1, 2, {"b": null}]}',
        b"f",
    )
    assert update.new[6] is None
    # alice's TOASTed bio was not changed and there is no old tuple to take it from.
    assert update.new[7] is UNCHANGED_TOAST


def test_key_change_update_has_key_old_tuple() -> None:
    update = only("update_key_change", Update)
    assert update.old_kind == "K"
    assert update.old == (b"2",) + (None,) * 7
    assert update.new[:2] == (b"20", b"bob") and update.new[7] == b"short"


def test_deletes() -> None:
    by_key = only("delete_default_identity", Delete)
    assert by_key.relation_oid == relation("accounts").oid
    assert (by_key.old_kind, by_key.old) == ("K", (b"20",) + (None,) * 7)
    full = only("delete_full_identity", Delete)
    assert full.relation_oid == relation("docs").oid
    assert (full.old_kind, full.old) == ("O", (b"1", b"second", big_body(), b"ok"))


def test_truncate() -> None:
    truncate = only("truncate", Truncate)
    assert truncate.options == 3 and truncate.cascade and truncate.restart_identity
    expected = {relation("accounts").oid, relation("scratch").oid}
    assert len(truncate.relation_oids) == 2 and set(truncate.relation_oids) == expected
    assert {r.name for r in relations("truncate")} == {"accounts", "scratch"}


def test_logical_messages() -> None:
    begin = only("message_transactional", Begin)
    tx = only("message_transactional", LogicalMessage)
    assert (tx.transactional, tx.prefix, tx.content) == (True, "pfx", b"hello")
    assert 0 < tx.lsn <= begin.final_lsn
    (entry,) = entries("message_nontransactional")
    non_tx = decode_message(raw(entry))
    assert isinstance(non_tx, LogicalMessage)
    assert (non_tx.transactional, non_tx.prefix, non_tx.content) == (False, "pfx", b"\x00\xffbye")
    assert non_tx.lsn == parse_lsn(entry["lsn"])


def test_origin() -> None:
    origin = only("insert_with_origin", Origin)
    assert origin == Origin(commit_lsn=parse_lsn("0/ABCDEF01"), name="upstream_origin")
    begin = only("insert_with_origin", Begin)
    # pg_replication_origin_xact_setup() also set the commit timestamp.
    assert pg_time_to_datetime(begin.commit_time) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert only("insert_with_origin", Insert).new == (b"1", b"from origin")


def test_relation_after_alter_table_has_new_column() -> None:
    before = relation("accounts")
    after = relation("accounts", "insert_after_alter")
    assert after.oid == before.oid
    assert after.columns[:-1] == before.columns
    assert after.columns[-1].name == "tags" and after.columns[-1].type_oid == 1009  # text[]
    insert = only("insert_after_alter", Insert)
    assert len(insert.new) == len(after.columns) == 9
    assert insert.new == (b"3", b"carol", b"0.00", None, b"null", None, b"n", None, b'{x,"y z"}')


# ---------------------------------------------------------------------------------------------
# Hand-built messages: TOAST fill rules, errors, input types


def test_fill_rules() -> None:
    u = UNCHANGED_TOAST
    old: TupleData = (b"a", None, u, BinaryValue(b"\x01"), b"")
    new: TupleData = (u, u, u, u, u, u)
    msg = decode_message(update_msg(b"O", old, new))
    assert isinstance(msg, Update)
    # real values are taken (also empty bytes and binary); NULL / 'u' / missing stay 'u'
    assert msg.new == (b"a", u, u, BinaryValue(b"\x01"), b"", u)
    assert msg.old == old
    no_old = decode_message(update_msg(None, (), (u, b"x")))
    assert isinstance(no_old, Update) and no_old.new == (u, b"x") and no_old.old is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty pgoutput message"),
        (b"Z", "unknown message type b'Z'"),
        (b"S\x00\x00\x00\x01", "not part of pgoutput protocol version 1"),
        (
            b"U\x00\x00\x00\x07N\x00\x01t\x00\x00",
            "truncated Update message: needed 4 bytes at offset 9, have 2",
        ),
        (b"U\x00\x00\x00\x07N\x00\x04nnnx", "unknown tuple marker b'x' in column 3"),
        (b"I\x00\x00\x00\x07N\x00\x01t\xff\xff\xff\xff", "negative value length -1 in column 0"),
        (b"I\x00\x00\x00\x07N\xff\xff", "negative column count -1"),
        (b"I\x00\x00\x00\x07N\x7f\xff", "tuple has 32767 columns but only 0 bytes remain"),
        (b"I\x00\x00\x00\x07N\x00\x00!", "1 bytes of trailing garbage after Insert message"),
        (b"I\x00\x00\x00\x07X\x00\x00", "expected b'N'"),
        (b"D\x00\x00\x00\x07N\x00\x00", "expected b'K' or b'O'"),
        (b"B" + bytes(19), "truncated Begin message"),
        (b"C" + bytes(26), "trailing garbage after Commit message"),
        (b"Y\x00\x00\x00\x01ns\x00\xff\x00", "invalid UTF-8 in type name string of Type message"),
        (b"Y\x00\x00\x00\x01ns\x00name", "unterminated type name string"),
        (b"R\x00\x00\x00\x01\x00t\x00q\x00\x00", "unknown replica identity b'q'"),
        (b"R\x00\x00\x00\x01\x00t\x00d\x7f\xff", "32767 columns need at least"),
        (b"T\x00\x00\x00\x02\x00\x00\x00\x00\x01", "truncated Truncate message"),
        (b"T\x80\x00\x00\x00\x00", "negative relation count"),
        (b"M\x01" + bytes(8) + b"p\x00\xff\xff\xff\xff", "negative content length"),
        (b"M\x01" + bytes(8) + b"p\x00\x00\x00\x00\x05abc", "truncated LogicalMessage message"),
    ],
)
def test_decode_errors_say_what_is_wrong(data: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_message(data)
    assert message in str(info.value)
    assert isinstance(info.value, ValueError)


def test_bytes_like_input_gives_bytes_values() -> None:
    data = update_msg(b"K", (b"k", None), (b"k", b"v"))
    for variant in (bytearray(data), memoryview(data)):
        msg = decode_message(variant)  # type: ignore[arg-type]
        assert isinstance(msg, Update)
        assert msg.new == (b"k", b"v") and all(type(v) is bytes for v in msg.new)
    with pytest.raises(TypeError):
        decode_message("U")  # type: ignore[arg-type]


def test_messages_are_frozen_slotted_dataclasses() -> None:
    msg = decode_message(update_msg(b"K", (b"k",), (b"k",)))
    assert isinstance(msg, Update)
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.relation_oid = 1  # type: ignore[misc]
    assert not hasattr(msg, "__dict__")
    assert msg == decode_message(update_msg(b"K", (b"k",), (b"k",)))
    hash(Begin(1, 2, 3))


def test_unchanged_toast_singleton() -> None:
    assert repr(UNCHANGED_TOAST) == "UNCHANGED_TOAST"
    assert UnchangedToast() is UNCHANGED_TOAST
    assert copy.copy(UNCHANGED_TOAST) is UNCHANGED_TOAST
    assert copy.deepcopy((UNCHANGED_TOAST,))[0] is UNCHANGED_TOAST
    assert pickle.loads(pickle.dumps(UNCHANGED_TOAST)) is UNCHANGED_TOAST
    value: TupleValue = UNCHANGED_TOAST
    assert value is not None


# ---------------------------------------------------------------------------------------------
# LSNs, clock, CopyData framing


@pytest.mark.parametrize(
    ("lsn", "text"),
    [
        (0, "0/0"),
        (0x16_B374D848, "16/B374D848"),
        (0x1_0000_0000, "1/0"),
        (0xFFFF_FFFF, "0/FFFFFFFF"),
        (2**64 - 1, "FFFFFFFF/FFFFFFFF"),
    ],
)
def test_format_and_parse_lsn(lsn: int, text: str) -> None:
    assert format_lsn(lsn) == text
    assert parse_lsn(text) == lsn
    assert parse_lsn(text.lower()) == lsn


def test_fixture_lsns_round_trip() -> None:
    for entry in entries():
        assert format_lsn(parse_lsn(entry["lsn"])) == entry["lsn"]


@pytest.mark.parametrize(
    "text",
    ["", "0", "0/", "/0", "1/2/3", " 0/0", "0/0\n", "123456789/0", "0/123456789", "0x1/0",
     "+1/0", "-1/0", "1_0/0", "\uff10/0", "g/0", "0 /0"],
)  # fmt: skip
def test_parse_lsn_rejects_bad_input(text: str) -> None:
    with pytest.raises(ValueError, match="invalid LSN"):
        parse_lsn(text)


@pytest.mark.parametrize("lsn", [-1, 2**64])
def test_format_lsn_rejects_out_of_range(lsn: int) -> None:
    with pytest.raises(ValueError):
        format_lsn(lsn)


def test_encode_standby_status_layout() -> None:
    now = now_pg_us()
    data = encode_standby_status(0x16_B374D848, 0x16_B374D800, 5, now, reply_requested=True)
    assert len(data) == 34
    assert struct.unpack(">cQQQqB", data) == (b"r", 0x16_B374D848, 0x16_B374D800, 5, now, 1)
    assert encode_standby_status(1, 2, 3, -4)[-1] == 0
    assert struct.unpack(">cQQQqB", encode_standby_status(2**64 - 1, 0, 0, 0)) == (
        b"r",
        2**64 - 1,
        0,
        0,
        0,
        0,
    )
    with pytest.raises(ValueError):
        encode_standby_status(-1, 0, 0, 0)
    with pytest.raises(ValueError):
        encode_standby_status(0, 0, 0, 2**63)


def test_clock() -> None:
    assert abs(pg_time_to_datetime(now_pg_us()) - datetime.now(UTC)) < timedelta(seconds=5)
    assert pg_time_to_datetime(0) == datetime(2000, 1, 1, tzinfo=UTC)
    assert pg_time_to_datetime(-1) == datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
    with pytest.raises(ValueError):
        pg_time_to_datetime(2**63 - 1)  # PostgreSQL's 'infinity'


def test_decode_copy_data_xlogdata() -> None:
    payload = raw(entries("initial_inserts")[0])
    frame = b"w" + struct.pack(">QQq", 0x1541038, 0x15501C8, 849716210382815) + payload
    xlog = decode_copy_data(frame)
    assert xlog == XLogData(0x1541038, 0x15501C8, 849716210382815, payload)
    assert isinstance(xlog, XLogData) and isinstance(decode_message(xlog.payload), Begin)
    empty = decode_copy_data(b"w" + bytes(24))
    assert empty == XLogData(0, 0, 0, b"")


def test_decode_copy_data_keepalive() -> None:
    for flag in (0, 1):
        frame = b"k" + struct.pack(">QqB", 2**64 - 1, -5, flag)
        assert decode_copy_data(frame) == PrimaryKeepalive(2**64 - 1, -5, bool(flag))


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (b"", "empty CopyData message"),
        (b"r" + bytes(33), "unknown CopyData message type b'r'"),
        (b"B" + bytes(20), "unknown CopyData message type b'B'"),
        (b"w" + bytes(23), "truncated XLogData message"),
        (b"k" + bytes(16), "truncated Primary keepalive message"),
        (b"k" + bytes(18), "trailing garbage after Primary keepalive message"),
    ],
)
def test_decode_copy_data_errors(frame: bytes, message: str) -> None:
    with pytest.raises(DecodeError) as info:
        decode_copy_data(frame)
    assert message in str(info.value)
