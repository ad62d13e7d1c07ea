"""Sans-IO decoder for PostgreSQL logical replication (``pgoutput``, protocol version 1).

Why this module exists
----------------------
The WAL consumer reads a ``START_REPLICATION ... LOGICAL`` stream. What arrives is two layers
of binary framing:

* the *streaming replication* layer: every CopyData message is either ``'w'`` (XLogData,
  carrying WAL positions plus a payload) or ``'k'`` (primary keepalive), and the client
  answers with ``'r'`` standby status updates that confirm how far it has flushed;
* the *pgoutput* layer inside each XLogData payload: Begin, Relation, Insert, Update, ...

psycopg hands us the raw bytes and nothing more, so something has to parse them. Keeping that
parser free of sockets, database connections and psycopg (a "sans-IO" design) means it can be
tested exhaustively from captured bytes and random inputs, reused by any transport, and
reasoned about on its own: bytes in, immutable values out, and :class:`DecodeError` -- and only
:class:`DecodeError` -- for anything malformed. It sits on the hot path (one call per replicated
row), so it reads integers with precompiled :mod:`struct` unpackers on ``bytes`` objects and
avoids per-byte Python loops.

Reference: https://www.postgresql.org/docs/15/protocol-logicalrep-message-formats.html and
https://www.postgresql.org/docs/15/protocol-replication.html

Conventions
-----------
* Column values are kept as raw bytes (text format, ``'t'``), ``None`` (SQL NULL, ``'n'``),
  :data:`UNCHANGED_TOAST` (``'u'``) or :class:`BinaryValue` (``'b'``); they are never decoded
  to ``str`` here, because only the relation's type OIDs say how they should be interpreted.
* Timestamps stay raw: signed 64-bit microseconds since 2000-01-01 00:00 UTC. Use
  :func:`pg_time_to_datetime` to convert.
* LSNs are plain unsigned 64-bit integers; :func:`format_lsn` / :func:`parse_lsn` convert to
  and from PostgreSQL's ``'16/B374D848'`` notation.
"""

from __future__ import annotations

import re
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final, TypeAlias, final

__all__ = [
    "UNCHANGED_TOAST",
    "Begin",
    "BinaryValue",
    "Column",
    "Commit",
    "DecodeError",
    "Delete",
    "Insert",
    "LogicalMessage",
    "Origin",
    "PgOutputMessage",
    "PrimaryKeepalive",
    "Relation",
    "Truncate",
    "TupleData",
    "TupleValue",
    "Type",
    "UnchangedToast",
    "Update",
    "XLogData",
    "decode_copy_data",
    "decode_message",
    "encode_standby_status",
    "format_lsn",
    "now_pg_us",
    "parse_lsn",
    "pg_time_to_datetime",
]


class DecodeError(ValueError):
    """Malformed replication data: the only exception the decode functions raise for bad bytes."""


@final
class UnchangedToast:
    """Type of :data:`UNCHANGED_TOAST`, the ``'u'`` column marker.

    PostgreSQL sends ``'u'`` for an out-of-line (TOASTed) value that the UPDATE did not change;
    the value itself is not in the message. There is exactly one instance.
    """

    __slots__ = ()
    _instance: UnchangedToast | None = None

    def __new__(cls) -> UnchangedToast:
        inst = UnchangedToast._instance
        if inst is None:
            inst = object.__new__(cls)
            UnchangedToast._instance = inst
        return inst

    def __repr__(self) -> str:
        return "UNCHANGED_TOAST"

    def __reduce__(self) -> str:
        # Pickle by reference to the module global, so unpickling yields the singleton.
        return "UNCHANGED_TOAST"

    def __copy__(self) -> UnchangedToast:
        return self

    def __deepcopy__(self, memo: object) -> UnchangedToast:
        return self


UNCHANGED_TOAST: Final[UnchangedToast] = UnchangedToast()


@dataclass(frozen=True, slots=True)
class BinaryValue:
    """A column value sent in binary format (``'b'`` marker; only with the ``binary`` option)."""

    data: bytes


TupleValue: TypeAlias = bytes | UnchangedToast | BinaryValue | None
TupleData: TypeAlias = tuple[TupleValue, ...]


# --------------------------------------------------------------------------------------------
# pgoutput messages


@dataclass(frozen=True, slots=True)
class Begin:
    """``'B'``: start of a transaction."""

    final_lsn: int
    commit_time: int  # µs since 2000-01-01 UTC, raw
    xid: int


@dataclass(frozen=True, slots=True)
class Commit:
    """``'C'``: end of a transaction."""

    flags: int
    commit_lsn: int
    end_lsn: int
    commit_time: int  # µs since 2000-01-01 UTC, raw


@dataclass(frozen=True, slots=True)
class Origin:
    """``'O'``: the transaction was replicated here from replication origin ``name``."""

    commit_lsn: int
    name: str


@dataclass(frozen=True, slots=True)
class Column:
    """One column of a :class:`Relation`."""

    flags: int
    name: str
    type_oid: int
    type_modifier: int

    @property
    def is_key(self) -> bool:
        """True if the column is part of the replica identity key."""
        return bool(self.flags & 1)


@dataclass(frozen=True, slots=True)
class Relation:
    """``'R'``: describes a table; sent before its first row and again after schema changes."""

    oid: int
    namespace: str  # empty string means pg_catalog
    name: str
    replica_identity: str  # 'd' default, 'n' nothing, 'f' full, 'i' index
    columns: tuple[Column, ...]


@dataclass(frozen=True, slots=True)
class Type:
    """``'Y'``: describes a non-built-in data type used by a following :class:`Relation`."""

    oid: int
    namespace: str
    name: str


@dataclass(frozen=True, slots=True)
class Insert:
    """``'I'``: a new row."""

    relation_oid: int
    new: TupleData


@dataclass(frozen=True, slots=True)
class Update:
    """``'U'``: a changed row.

    ``old_kind`` is ``'K'`` (old replica-identity key columns only; others are ``None``),
    ``'O'`` (whole old row, REPLICA IDENTITY FULL) or ``None`` (no old tuple was sent, e.g.
    DEFAULT identity and the key did not change). :data:`UNCHANGED_TOAST` entries of ``new``
    have already been replaced by the old tuple's value wherever the old tuple had one.
    """

    relation_oid: int
    old_kind: str | None
    old: TupleData | None
    new: TupleData


@dataclass(frozen=True, slots=True)
class Delete:
    """``'D'``: a deleted row, identified by ``old`` (``old_kind`` ``'K'`` or ``'O'``)."""

    relation_oid: int
    old_kind: str
    old: TupleData


@dataclass(frozen=True, slots=True)
class Truncate:
    """``'T'``: one TRUNCATE statement covering ``relation_oids``."""

    options: int
    relation_oids: tuple[int, ...]

    @property
    def cascade(self) -> bool:
        """TRUNCATE ... CASCADE."""
        return bool(self.options & 1)

    @property
    def restart_identity(self) -> bool:
        """TRUNCATE ... RESTART IDENTITY."""
        return bool(self.options & 2)


@dataclass(frozen=True, slots=True)
class LogicalMessage:
    """``'M'``: a message from ``pg_logical_emit_message()`` (needs the ``messages`` option)."""

    transactional: bool
    lsn: int
    prefix: str
    content: bytes


PgOutputMessage: TypeAlias = (
    Begin | Commit | Origin | Relation | Type | Insert | Update | Delete | Truncate | LogicalMessage
)


# --------------------------------------------------------------------------------------------
# Streaming replication (CopyData) framing


@dataclass(frozen=True, slots=True)
class XLogData:
    """``'w'``: WAL data; ``payload`` is one pgoutput message (see :func:`decode_message`)."""

    wal_start: int
    wal_end: int
    send_time: int  # µs since 2000-01-01 UTC, raw
    payload: bytes


@dataclass(frozen=True, slots=True)
class PrimaryKeepalive:
    """``'k'``: server heartbeat; if ``reply_requested``, send a standby status update now."""

    wal_end: int
    send_time: int  # µs since 2000-01-01 UTC, raw
    reply_requested: bool


# --------------------------------------------------------------------------------------------
# Decoding internals

_i16_at: Final = struct.Struct(">h").unpack_from
_i32_at: Final = struct.Struct(">i").unpack_from
_u32_at: Final = struct.Struct(">I").unpack_from
_u64_at: Final = struct.Struct(">Q").unpack_from
_begin_at: Final = struct.Struct(">QqI").unpack_from  # final_lsn, commit_time, xid
_commit_at: Final = struct.Struct(">BQQq").unpack_from  # flags, commit_lsn, end_lsn, time
_xlogdata_at: Final = struct.Struct(">QQq").unpack_from  # wal_start, wal_end, send_time
_keepalive_at: Final = struct.Struct(">QqB").unpack_from  # wal_end, send_time, reply
_standby_status: Final = struct.Struct(">cQQQqB")

_BEGIN_LEN: Final = 21
_COMMIT_LEN: Final = 26
_KEEPALIVE_LEN: Final = 18
_XLOGDATA_HEADER: Final = 25

_NEW, _KEY, _OLD = b"N"[0], b"K"[0], b"O"[0]
_REPLICA_IDENTITIES: Final = frozenset(b"dnfi")

# Message types of later protocol versions, named so the error says what was received.
_NOT_V1: Final = {
    b"S"[0]: "Stream Start",
    b"E"[0]: "Stream Stop",
    b"c"[0]: "Stream Commit",
    b"A"[0]: "Stream Abort",
    b"b"[0]: "Begin Prepare",
    b"P"[0]: "Prepare",
    b"K"[0]: "Commit Prepared",
    b"r"[0]: "Rollback Prepared",
    b"p"[0]: "Stream Prepare",
}


def _truncated(kind: str, need: int, pos: int, n: int) -> DecodeError:
    have = n - pos if n > pos else 0
    return DecodeError(
        f"truncated {kind} message: needed {need} bytes at offset {pos}, have {have}"
    )


def _trailing(kind: str, pos: int, n: int) -> DecodeError:
    return DecodeError(f"{n - pos} bytes of trailing garbage after {kind} message at offset {pos}")


def _wrong_length(kind: str, expected: int, n: int) -> DecodeError:
    if n < expected:
        return DecodeError(f"truncated {kind} message: needs {expected} bytes, have {n}")
    return DecodeError(f"{n - expected} bytes of trailing garbage after {kind} message")


def _string(buf: bytes, pos: int, n: int, kind: str, what: str) -> tuple[str, int]:
    """Read a NUL-terminated UTF-8 string at ``pos``; return it and the offset after the NUL."""
    end = buf.find(b"\x00", pos)
    if end < 0:
        raise DecodeError(f"truncated {kind} message: unterminated {what} string at offset {pos}")
    try:
        return buf[pos:end].decode(), end + 1
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"invalid UTF-8 in {what} string of {kind} message at offset {pos}: {exc.reason}"
        ) from None


def _tuple(buf: bytes, pos: int, n: int, kind: str) -> tuple[TupleData, int, bool]:
    """Read TupleData at ``pos``; return it, the offset after it, and whether it has a 'u'.

    This is the hot loop. Reads past the end are not checked up front: ``buf[pos]`` raises
    IndexError and the unpacker raises struct.error, and the (zero-cost) ``try`` turns those
    into a precise DecodeError. The value length is read unsigned, so a negative length shows
    up as an end offset beyond the buffer and is caught by the same ``end > n`` test.
    """
    if pos + 2 > n:
        raise _truncated(kind, 2, pos, n)
    ncols = _i16_at(buf, pos)[0]
    if ncols < 0:
        raise DecodeError(f"negative column count {ncols} in {kind} message at offset {pos}")
    pos += 2
    if ncols > n - pos:  # every column takes at least its 1-byte marker
        raise DecodeError(
            f"truncated {kind} message: tuple has {ncols} columns but only {n - pos} bytes"
            f" remain at offset {pos}"
        )
    values: list[TupleValue] = [None] * ncols
    has_unchanged = False
    try:
        for col in range(ncols):
            marker = buf[pos]
            if marker == 116:  # 't': text value
                start = pos + 5
                pos = start + _u32_at(buf, pos + 1)[0]
                if pos > n:
                    raise _bad_length(start, pos, n, kind, col)
                values[col] = buf[start:pos]
            elif marker == 110:  # 'n': NULL (the list is pre-filled with None)
                pos += 1
            elif marker == 117:  # 'u': unchanged TOASTed value
                pos += 1
                values[col] = UNCHANGED_TOAST
                has_unchanged = True
            elif marker == 98:  # 'b': binary value
                start = pos + 5
                pos = start + _u32_at(buf, pos + 1)[0]
                if pos > n:
                    raise _bad_length(start, pos, n, kind, col)
                values[col] = BinaryValue(buf[start:pos])
            else:
                raise DecodeError(
                    f"unknown tuple marker {bytes((marker,))!r} in column {col} of {kind}"
                    f" message at offset {pos}"
                )
    except IndexError:
        raise _truncated(kind, 1, pos, n) from None
    except struct.error:
        raise _truncated(kind, 4, pos + 1, n) from None
    return tuple(values), pos, has_unchanged


def _bad_length(start: int, end: int, n: int, kind: str, col: int) -> DecodeError:
    length = end - start
    if length >= 0x8000_0000:
        return DecodeError(
            f"negative value length {length - 0x1_0000_0000} in column {col} of {kind} message"
            f" at offset {start - 4}"
        )
    return _truncated(kind, length, start, n)


def _fill_unchanged(new: TupleData, old: TupleData) -> TupleData:
    """Replace UNCHANGED_TOAST in ``new`` by the value at the same index of ``old``, if real."""
    filled = list(new)
    for i in range(min(len(new), len(old))):
        if filled[i] is UNCHANGED_TOAST:
            o = old[i]
            if isinstance(o, (bytes, BinaryValue)):
                filled[i] = o
    return tuple(filled)


def _decode_begin(buf: bytes, n: int) -> Begin:
    if n != _BEGIN_LEN:
        raise _wrong_length("Begin", _BEGIN_LEN, n)
    final_lsn, commit_time, xid = _begin_at(buf, 1)
    return Begin(final_lsn, commit_time, xid)


def _decode_commit(buf: bytes, n: int) -> Commit:
    if n != _COMMIT_LEN:
        raise _wrong_length("Commit", _COMMIT_LEN, n)
    flags, commit_lsn, end_lsn, commit_time = _commit_at(buf, 1)
    return Commit(flags, commit_lsn, end_lsn, commit_time)


def _decode_origin(buf: bytes, n: int) -> Origin:
    if n < 9:
        raise _truncated("Origin", 8, 1, n)
    commit_lsn = _u64_at(buf, 1)[0]
    name, pos = _string(buf, 9, n, "Origin", "origin name")
    if pos != n:
        raise _trailing("Origin", pos, n)
    return Origin(commit_lsn, name)


def _decode_relation(buf: bytes, n: int) -> Relation:
    kind = "Relation"
    if n < 5:
        raise _truncated(kind, 4, 1, n)
    oid = _u32_at(buf, 1)[0]
    namespace, pos = _string(buf, 5, n, kind, "namespace")
    name, pos = _string(buf, pos, n, kind, "relation name")
    if pos + 3 > n:
        raise _truncated(kind, 3, pos, n)
    ident = buf[pos]
    if ident not in _REPLICA_IDENTITIES:
        raise DecodeError(
            f"unknown replica identity {bytes((ident,))!r} in Relation message at offset {pos}"
        )
    ncols = _i16_at(buf, pos + 1)[0]
    if ncols < 0:
        raise DecodeError(f"negative column count {ncols} in Relation message at offset {pos + 1}")
    pos += 3
    # Each column needs at least flags(1) + empty name(1) + type oid(4) + typmod(4) bytes.
    if ncols * 10 > n - pos:
        raise DecodeError(
            f"truncated Relation message: {ncols} columns need at least {ncols * 10} bytes"
            f" at offset {pos}, have {n - pos}"
        )
    columns: list[Column] = []
    for _ in range(ncols):
        if pos >= n:
            raise _truncated(kind, 10, pos, n)
        flags = buf[pos]
        colname, pos = _string(buf, pos + 1, n, kind, "column name")
        if pos + 8 > n:
            raise _truncated(kind, 8, pos, n)
        columns.append(Column(flags, colname, _u32_at(buf, pos)[0], _i32_at(buf, pos + 4)[0]))
        pos += 8
    if pos != n:
        raise _trailing(kind, pos, n)
    return Relation(oid, namespace, name, chr(ident), tuple(columns))


def _decode_type(buf: bytes, n: int) -> Type:
    if n < 5:
        raise _truncated("Type", 4, 1, n)
    oid = _u32_at(buf, 1)[0]
    namespace, pos = _string(buf, 5, n, "Type", "namespace")
    name, pos = _string(buf, pos, n, "Type", "type name")
    if pos != n:
        raise _trailing("Type", pos, n)
    return Type(oid, namespace, name)


def _decode_insert(buf: bytes, n: int) -> Insert:
    if n < 6:
        raise _truncated("Insert", 5, 1, n)
    if buf[5] != _NEW:
        raise DecodeError(f"expected b'N' at offset 5 of Insert message, got {buf[5:6]!r}")
    new, pos, _ = _tuple(buf, 6, n, "Insert")
    if pos != n:
        raise _trailing("Insert", pos, n)
    return Insert(_u32_at(buf, 1)[0], new)


def _decode_update(buf: bytes, n: int) -> Update:
    if n < 6:
        raise _truncated("Update", 5, 1, n)
    marker = buf[5]
    old: TupleData | None = None
    old_kind: str | None = None
    pos = 6
    if marker == _KEY or marker == _OLD:
        old_kind = "K" if marker == _KEY else "O"
        old, pos, _ = _tuple(buf, 6, n, "Update")
        if pos >= n:
            raise _truncated("Update", 1, pos, n)
        marker = buf[pos]
        pos += 1
    if marker != _NEW:
        raise DecodeError(
            f"expected b'N' at offset {pos - 1} of Update message, got {bytes((marker,))!r}"
        )
    new, pos, has_unchanged = _tuple(buf, pos, n, "Update")
    if pos != n:
        raise _trailing("Update", pos, n)
    if has_unchanged and old is not None:
        new = _fill_unchanged(new, old)
    return Update(_u32_at(buf, 1)[0], old_kind, old, new)


def _decode_delete(buf: bytes, n: int) -> Delete:
    if n < 6:
        raise _truncated("Delete", 5, 1, n)
    marker = buf[5]
    if marker != _KEY and marker != _OLD:
        raise DecodeError(
            f"expected b'K' or b'O' at offset 5 of Delete message, got {bytes((marker,))!r}"
        )
    old, pos, _ = _tuple(buf, 6, n, "Delete")
    if pos != n:
        raise _trailing("Delete", pos, n)
    return Delete(_u32_at(buf, 1)[0], "K" if marker == _KEY else "O", old)


def _decode_truncate(buf: bytes, n: int) -> Truncate:
    if n < 6:
        raise _truncated("Truncate", 5, 1, n)
    nrels = _i32_at(buf, 1)[0]
    if nrels < 0:
        raise DecodeError(f"negative relation count {nrels} in Truncate message at offset 1")
    options = buf[5]
    need = nrels * 4
    if need != n - 6:
        if need > n - 6:
            raise _truncated("Truncate", need, 6, n)
        raise _trailing("Truncate", 6 + need, n)
    return Truncate(options, struct.unpack_from(f">{nrels}I", buf, 6))


def _decode_logical_message(buf: bytes, n: int) -> LogicalMessage:
    kind = "LogicalMessage"
    if n < 10:
        raise _truncated(kind, 9, 1, n)
    flags = buf[1]
    lsn = _u64_at(buf, 2)[0]
    prefix, pos = _string(buf, 10, n, kind, "prefix")
    if pos + 4 > n:
        raise _truncated(kind, 4, pos, n)
    length = _i32_at(buf, pos)[0]
    if length < 0:
        raise DecodeError(
            f"negative content length {length} in LogicalMessage message at offset {pos}"
        )
    pos += 4
    end = pos + length
    if end != n:
        if end > n:
            raise _truncated(kind, length, pos, n)
        raise _trailing(kind, end, n)
    return LogicalMessage(bool(flags & 1), lsn, prefix, buf[pos:end])


_DECODERS: Final[dict[int, Callable[[bytes, int], PgOutputMessage]]] = {
    b"B"[0]: _decode_begin,
    b"C"[0]: _decode_commit,
    b"O"[0]: _decode_origin,
    b"R"[0]: _decode_relation,
    b"Y"[0]: _decode_type,
    b"I"[0]: _decode_insert,
    b"U"[0]: _decode_update,
    b"D"[0]: _decode_delete,
    b"T"[0]: _decode_truncate,
    b"M"[0]: _decode_logical_message,
}


def _as_bytes(data: bytes) -> bytes:
    # bytearray / memoryview are accepted, but values must come out as immutable bytes.
    if type(data) is bytes:
        return data
    try:
        return bytes(memoryview(data))
    except TypeError:
        raise TypeError(f"expected a bytes-like object, got {type(data).__name__}") from None


# --------------------------------------------------------------------------------------------
# Public functions


def decode_message(payload: bytes) -> PgOutputMessage:
    """Decode one pgoutput (protocol version 1) message, e.g. an :class:`XLogData` payload.

    Raises :class:`DecodeError` for any malformed input (and :class:`TypeError` only if
    ``payload`` is not bytes-like at all).
    """
    buf = _as_bytes(payload)
    n = len(buf)
    if n == 0:
        raise DecodeError("empty pgoutput message")
    decoder = _DECODERS.get(buf[0])
    if decoder is None:
        later = _NOT_V1.get(buf[0])
        if later is not None:
            raise DecodeError(
                f"message type {buf[:1]!r} ({later}) is not part of pgoutput protocol version 1"
            )
        raise DecodeError(f"unknown message type {buf[:1]!r}")
    try:
        return decoder(buf, n)
    except DecodeError:
        raise
    except (struct.error, IndexError, ValueError, OverflowError) as exc:  # pragma: no cover
        # Belt and braces: every read above is bounds-checked, so this should be unreachable.
        raise DecodeError(f"malformed {buf[:1]!r} message: {exc}") from exc


def decode_copy_data(buf: bytes) -> XLogData | PrimaryKeepalive:
    """Decode one CopyData message of a ``START_REPLICATION`` stream (``'w'`` or ``'k'``)."""
    buf = _as_bytes(buf)
    n = len(buf)
    if n == 0:
        raise DecodeError("empty CopyData message")
    tag = buf[0]
    if tag == 0x77:  # 'w'
        if n < _XLOGDATA_HEADER:
            raise DecodeError(
                f"truncated XLogData message: header needs {_XLOGDATA_HEADER} bytes, have {n}"
            )
        wal_start, wal_end, send_time = _xlogdata_at(buf, 1)
        return XLogData(wal_start, wal_end, send_time, buf[_XLOGDATA_HEADER:])
    if tag == 0x6B:  # 'k'
        if n != _KEEPALIVE_LEN:
            raise _wrong_length("Primary keepalive", _KEEPALIVE_LEN, n)
        wal_end, send_time, reply = _keepalive_at(buf, 1)
        return PrimaryKeepalive(wal_end, send_time, bool(reply))
    raise DecodeError(f"unknown CopyData message type {buf[:1]!r} (expected b'w' or b'k')")


def encode_standby_status(
    write_lsn: int,
    flush_lsn: int,
    apply_lsn: int,
    now_us: int,
    reply_requested: bool = False,
) -> bytes:
    """Build a Standby Status Update (``'r'``) CopyData message: 34 bytes.

    ``now_us`` is the client clock in µs since 2000-01-01 UTC (see :func:`now_pg_us`).
    Raises :class:`ValueError` if an LSN is not an unsigned 64-bit integer or ``now_us`` does
    not fit in a signed 64-bit integer.
    """
    for label, lsn in (
        ("write_lsn", write_lsn),
        ("flush_lsn", flush_lsn),
        ("apply_lsn", apply_lsn),
    ):
        if not 0 <= lsn <= 0xFFFF_FFFF_FFFF_FFFF:
            raise ValueError(f"{label} {lsn!r} is not an unsigned 64-bit LSN")
    if not -(1 << 63) <= now_us < (1 << 63):
        raise ValueError(f"now_us {now_us!r} does not fit in a signed 64-bit integer")
    return _standby_status.pack(
        b"r", write_lsn, flush_lsn, apply_lsn, now_us, 1 if reply_requested else 0
    )


_PG_EPOCH: Final = datetime(2000, 1, 1, tzinfo=UTC)
_PG_EPOCH_UNIX_US: Final = 946_684_800_000_000


def now_pg_us() -> int:
    """Current time as microseconds since 2000-01-01 00:00 UTC (PostgreSQL's epoch)."""
    return time.time_ns() // 1000 - _PG_EPOCH_UNIX_US


def pg_time_to_datetime(us: int) -> datetime:
    """Convert raw µs since 2000-01-01 UTC (as in Begin/Commit/XLogData) to an aware datetime.

    Raises :class:`ValueError` for values outside :class:`datetime`'s range (PostgreSQL's
    ``infinity`` timestamps, for instance).
    """
    try:
        return _PG_EPOCH + timedelta(microseconds=us)
    except OverflowError:
        raise ValueError(f"timestamp {us} µs since 2000-01-01 is out of datetime range") from None


def format_lsn(lsn: int) -> str:
    """Format an LSN like PostgreSQL: ``'16/B374D848'`` (upper-case hex, no zero padding)."""
    if not 0 <= lsn <= 0xFFFF_FFFF_FFFF_FFFF:
        raise ValueError(f"LSN {lsn!r} is not an unsigned 64-bit integer")
    return f"{lsn >> 32:X}/{lsn & 0xFFFF_FFFF:X}"


_LSN_RE: Final = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def parse_lsn(text: str) -> int:
    """Parse ``'16/B374D848'`` into an int; the inverse of :func:`format_lsn`.

    Accepts what PostgreSQL's ``pg_lsn`` input accepts: 1-8 hex digits, ``/``, 1-8 hex digits,
    nothing else (no whitespace). Raises :class:`ValueError` otherwise.
    """
    match = _LSN_RE.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid LSN {text!r}: expected two groups of 1-8 hex digits separated by '/',"
            " like '16/B374D848'"
        )
    return (int(match[1], 16) << 32) | int(match[2], 16)
