"""What every benchmark here shares: the server and a scratch database, waiting, percentiles,
py-spy sampling, and the summary table."""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, Envelope, Session
from psycopg import sql

from wal_consumer.localpg import LocalPostgres

ROOT = Path(__file__).resolve().parent.parent


class BenchError(RuntimeError):
    """The benchmark could not run to the end."""


@dataclass
class Figure:
    """One line of the summary table (``met`` None: no aim to meet)."""

    part: str
    measured: str
    reference: str
    ratio: float | None
    aim: str
    met: bool | None


@contextlib.contextmanager
def server() -> Iterator[tuple[str, str]]:
    """(admin DSN, description): $DATABASE_URL's server, else a throwaway local cluster."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url, "server at $DATABASE_URL"
        return
    cluster = LocalPostgres.create()
    try:
        cluster.start()
        yield cluster.dsn(), f"throwaway LocalPostgres cluster in {cluster.basedir}"
    finally:
        cluster.destroy()


def with_dbname(dsn: str, dbname: str) -> str:
    return urlunsplit(urlsplit(dsn)._replace(path=f"/{dbname}"))


@contextlib.contextmanager
def scratch_database(admin_dsn: str) -> Iterator[str]:
    """A new database on the server, dropped (with its replication slots) at the end."""
    name = f"grails_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        yield with_dbname(admin_dsn, name)
    finally:
        with psycopg.connect(admin_dsn, autocommit=True) as conn:
            for (slot,) in conn.execute("SELECT slot_name FROM pg_replication_slots"
                                        " WHERE database = %s", [name]).fetchall():
                with contextlib.suppress(psycopg.Error):
                    conn.execute("SELECT pg_terminate_backend(active_pid) FROM"
                                 " pg_replication_slots WHERE slot_name = %s"
                                 " AND active_pid IS NOT NULL", [slot])
                    conn.execute("SELECT pg_drop_replication_slot(%s)", [slot])
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))


def wait_for(
    predicate: Callable[[], object], *, timeout: float, what: str, interval: float = 0.05,
) -> float:
    """Poll until ``predicate`` is truthy; return the monotonic time it first was."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)
    return time.monotonic()


def percentile(ordered: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an ascending sequence."""
    return ordered[max(0, min(len(ordered) - 1, math.ceil(p / 100 * len(ordered)) - 1))]


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes]:
    """Sample a process until it exits, as collapsed stacks with line numbers."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    return subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--format", "raw", "--rate", "250",
         "--nonblocking", "--output", str(output)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def ratio_text(ratio: float) -> str:
    return f"{ratio:.1%}" if ratio < 2 else f"{ratio:.1f}x"


def print_summary(figures: Sequence[Figure]) -> None:
    header = ("part", "measured", "reference (same run)", "ratio", "aim", "")
    rows = [
        (f.part, f.measured, f.reference, "-" if f.ratio is None else ratio_text(f.ratio), f.aim,
         "-" if f.met is None else "met" if f.met else "MISSED")
        for f in figures
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print("\n== summary")
    for r in [header, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip())


# -- the SMTP server ----------------------------------------------------------------------------


def free_port() -> int:
    # aiosmtpd's Controller(port=0) does not work: pick a free port first.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Mail:
    at: float  # time.monotonic() when DATA was complete
    rcpt: str
    content: bytes

    @property
    def headers(self) -> bytes:
        return self.content.split(b"\r\n\r\n", 1)[0]


@dataclass
class Catcher:
    """An SMTP server that keeps every message and when it had it; parsing waits for later."""

    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        at = time.monotonic()
        content = envelope.original_content or b""
        with self._lock:
            for rcpt in envelope.rcpt_tos:
                self.mails.append(Mail(at, rcpt, content))
        return "250 OK"

    def count(self) -> int:
        with self._lock:
            return len(self.mails)

    def since(self, index: int) -> list[Mail]:
        with self._lock:
            return self.mails[index:]

    def all(self) -> list[Mail]:
        return self.since(0)

    def __enter__(self) -> Catcher:
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port)
        self._controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._controller is not None:
            self._controller.stop()


# -- the daemons under test ---------------------------------------------------------------


def pid_cpu(pid: int) -> float | None:
    """User + system CPU seconds of a process so far (Linux /proc; None where unknown)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class Daemon:
    """``python -m <module> <command>`` with its output in a log file."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    profiler: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> Daemon:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", *self.argv], env=self.env,
                                         cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        return self

    def alive(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited early; its log ({self.log_path}):\n"
                             f"{self.log_tail()}")
        return True

    def logged(self, text: str) -> bool:
        with contextlib.suppress(OSError):
            return text in self.log_path.read_text(errors="replace")
        return False

    def cpu_seconds(self) -> float:
        return 0.0 if self.proc is None else pid_cpu(self.proc.pid) or 0.0

    def profile(self, directory: Path | None) -> None:
        if directory is not None and self.proc is not None:
            self.profiler = start_py_spy(self.proc.pid, directory / f"{self.name}.txt")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.profiler is not None:
            try:
                self.profiler.wait(60)
            except subprocess.TimeoutExpired:
                self.profiler.kill()

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def count_in_log(self, pattern: str) -> int:
        with contextlib.suppress(OSError):
            return len(re.findall(pattern, self.log_path.read_text(errors="replace")))
        return 0
