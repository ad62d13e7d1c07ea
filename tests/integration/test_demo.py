"""The README's first command tells the whole story and exits 0 well within two minutes."""

from __future__ import annotations

import subprocess
import sys
import time

from support import ROOT, consumer_env


def test_demo_runs_start_to_finish_in_under_two_minutes() -> None:
    env = consumer_env("")
    env.pop("DATABASE_URL")  # the demo starts its own throwaway PostgreSQL
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "wal_consumer", "demo"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for outcome in ["watcher emailed: listed for 1.5 ETH", "watcher emailed: price changed",
                    "watcher emailed: new offer", "watcher emailed: sold for 1.4 ETH",
                    "listing expired (after expires_at)", "stale listing cancelled",
                    "seller emailed: listing cancelled", "/status", "/metrics",
                    "daemons stopped cleanly"]:
        assert outcome in out, f"{outcome!r} missing from the demo's output:\n{out}"
    if (ROOT / "node_modules" / ".bin" / "anvil").exists():
        assert "ENS data synced" in out and "reconciled into ens_names.owner_address" in out
    assert elapsed < 120
