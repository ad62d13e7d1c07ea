"""Transactions the server sends again at or below our checkpoint are skipped (PITFALLS 7).

After a server crash the slot's confirmed position can fall back behind our checkpoint (it is
persisted only at server checkpoints). The server honours the start position we ask for, so to
see our own skip rule at work this test asks for an older one on purpose: a second slot, created
before the first transaction, is streamed from its beginning with the first slot's checkpoint.
"""

from __future__ import annotations

import threading

import psycopg
from marketplace import add_listing, add_name, job_count, tasks_by_event_key
from support import wait_until

from wal_consumer.consumer import Consumer, _Session
from wal_consumer.enqueue import BatchWriter
from wal_consumer.settings import ConsumerSettings
from wal_consumer.stream import ReplicationStream


def test_transactions_at_or_below_the_checkpoint_are_skipped(
    ready_db: ConsumerSettings, conn: psycopg.Connection
) -> None:
    conn.execute("SELECT pg_create_logical_replication_slot('replay_slot', 'pgoutput')")
    stop = threading.Event()
    thread = threading.Thread(target=Consumer(ready_db, stop).run, daemon=True)
    thread.start()
    name_id = add_name(conn, "resent.eth")
    add_listing(conn, name_id)
    wait_until(lambda: job_count(conn) == 2, what="first listing's jobs")
    stop.set()
    thread.join(30)
    conn.execute(
        "INSERT INTO grails_workers.consumer_checkpoint (slot_name, commit_lsn, end_lsn)"
        " SELECT 'replay_slot', commit_lsn, end_lsn FROM grails_workers.consumer_checkpoint"
        " WHERE slot_name = %s", [ready_db.slot],
    )
    add_listing(conn, name_id)  # after the checkpoint: must be enqueued once

    replay = ready_db.model_copy(update={"slot": "replay_slot"})
    consumer = Consumer(replay, threading.Event())
    with psycopg.connect(replay.database_url) as writer_conn:
        writer = BatchWriter(writer_conn, "replay_slot")
        committed = writer.load_checkpoint()
        stream = ReplicationStream(replay.database_url, "replay_slot", replay.publication, "t")
        stream.start(0)  # the server resends everything since the slot was created
        session = _Session(consumer, stream, writer, committed)
        loop = threading.Thread(target=session.loop, daemon=True)
        loop.start()
        # the second listing's notify-watchers (its sync of the same name is not queued while
        # the first is pending: queueing lock sync-ens-data:<ens_name_id>)
        wait_until(lambda: job_count(conn) >= 3, what="second listing's jobs")
        consumer.stop.set()
        loop.join(30)
        stream.close()
    keys = tasks_by_event_key(conn)
    assert len(keys) == 2
    assert all(set(tasks.values()) == {1} for tasks in keys.values()), keys
    assert job_count(conn) == 3
