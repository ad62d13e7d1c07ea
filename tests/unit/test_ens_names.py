"""ENS names: normalisation (web3 8 with pyunormalize 18 breaks it: pinned below 18), hashes,
and the per-name queueing lock of sync jobs."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from job_handlers.chain import names
from job_handlers.ens_sync import queueing_lock
from wal_consumer.routes import HIGH_PRIORITY, sync_ens_data


def test_names_normalise_with_the_pinned_pyunormalize() -> None:
    assert int(version("pyunormalize").split(".")[0]) < 18
    assert names.normalize("Alice.ETH") == "alice.eth"
    fullwidth = "\uff56\uff49\uff54\uff41\uff4c\uff49\uff4b.eth"  # folds (ENSIP-15)
    assert names.normalize(fullwidth) == "vitalik.eth"
    assert names.namehash("eth").hex() == (
        "93cdeb708b7545dc668eb9280176169d1c33cfd8ed6f04690a0bcc88a93fc4ae")
    assert names.namehash("alice.eth") == names.namehash(names.normalize("ALICE.eth"))
    assert names.eth_second_level_label("alice.eth") == "alice"
    assert names.eth_second_level_label("pay.alice.eth") is None
    assert names.eth_second_level_label("alice.xyz") is None
    assert names.dns_encode("alice.eth") == b"\x05alice\x03eth\x00"


@pytest.mark.parametrize("bad", ["a..eth", "", "x\u200d.eth", "bad name.eth"])
def test_invalid_names_are_named_in_the_error(bad: str) -> None:
    with pytest.raises(names.InvalidName, match="is not a valid ENS name"):
        names.normalize(bad)


def test_every_sync_job_of_a_name_shares_one_queueing_lock() -> None:
    job = sync_ens_data(7, "new-listing", "0/1:1")
    assert job.queueing_lock == job.lock == queueing_lock(7) == "sync-ens-data:7"
    assert job.priority == HIGH_PRIORITY and job.queue == "ens-sync"
    assert job.args == {"ens_name_id": 7, "reason": "new-listing", "event_key": "0/1:1"}
