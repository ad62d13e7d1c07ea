"""A throwaway PostgreSQL cluster built from the local server binaries.

The demo and the test suite need a real server with ``wal_level=logical`` and nothing else
installed. PostgreSQL refuses to run as root, so when we are root every server command runs as
the ``postgres`` OS user, in a directory that user owns.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_SETTINGS: Mapping[str, str] = {
    "wal_level": "logical",
    "max_replication_slots": "20",
    "max_wal_senders": "20",
    "max_connections": "200",
    "fsync": "off",
    "full_page_writes": "off",
    "listen_addresses": "'127.0.0.1'",
    "log_min_messages": "warning",
    "log_line_prefix": "'%m [%p] '",
}


class LocalPostgresError(RuntimeError):
    """The local server could not be found, created, started or stopped."""


def find_bindir() -> Path:
    """Where initdb and pg_ctl live: ``pg_config --bindir``, else the newest Debian layout."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config:
        with contextlib.suppress(OSError, subprocess.CalledProcessError):
            out = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, check=True
            ).stdout.strip()
            candidates.append(Path(out))
    versioned = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"),
        key=lambda p: int(Path(p).parent.name) if Path(p).parent.name.isdigit() else 0,
        reverse=True,
    )
    candidates.extend(Path(p) for p in versioned)
    for bindir in candidates:
        if (bindir / "initdb").exists() and (bindir / "pg_ctl").exists():
            return bindir
    raise LocalPostgresError(
        "no PostgreSQL server binaries found (looked at `pg_config --bindir` and "
        "/usr/lib/postgresql/*/bin); install the postgresql package or set DATABASE_URL"
    )


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LocalPostgres:
    """One cluster in a temporary directory; ``start``/``stop``/``restart``/``destroy``."""

    bindir: Path
    basedir: Path
    port: int
    run_as: str | None
    settings: dict[str, str] = field(default_factory=dict)

    @property
    def datadir(self) -> Path:
        return self.basedir / "data"

    @property
    def logfile(self) -> Path:
        return self.basedir / "server.log"

    @classmethod
    def create(cls, settings: Mapping[str, str] | None = None) -> LocalPostgres:
        bindir = find_bindir()
        run_as = "postgres" if os.geteuid() == 0 else None
        basedir = Path(tempfile.mkdtemp(prefix="grails-pg-"))
        if run_as:
            shutil.chown(basedir, user=run_as, group=run_as)
        merged = {**DEFAULT_SETTINGS, **(settings or {})}
        cluster = cls(bindir, basedir, free_port(), run_as, merged)
        cluster._run(
            "initdb", "-D", str(cluster.datadir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
        )
        conf = "".join(f"{k} = {v}\n" for k, v in cluster.settings.items())
        conf += f"port = {cluster.port}\nunix_socket_directories = '{basedir}'\n"
        cluster._write_as_owner(cluster.datadir / "postgresql.auto.conf", conf)
        return cluster

    def _command(self, program: str, *args: str) -> list[str]:
        command = [str(self.bindir / program), *args]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        return command

    def _run(self, program: str, *args: str, timeout: float = 120) -> None:
        result = subprocess.run(
            self._command(program, *args), capture_output=True, text=True, timeout=timeout,
            cwd=self.basedir,
        )
        if result.returncode != 0:
            raise LocalPostgresError(
                f"{program} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{self.log_tail()}"
            )

    def _write_as_owner(self, path: Path, text: str) -> None:
        path.write_text(text)
        if self.run_as:
            shutil.chown(path, user=self.run_as, group=self.run_as)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.logfile.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def start(self) -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", "60",
                  "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop")

    def restart(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.datadir), "-l", str(self.logfile), "-m", mode, "-w",
                  "-t", "60", "restart")

    def is_running(self) -> bool:
        return (self.datadir / "postmaster.pid").exists() and self.postmaster_pid() is not None

    def postmaster_pid(self) -> int | None:
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().splitlines()[0])
            os.kill(pid, 0)
        except (OSError, ValueError, IndexError):
            return None
        return pid

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        return f"postgresql://{user}@127.0.0.1:{self.port}/{dbname}"

    def destroy(self) -> None:
        pid = self.postmaster_pid()
        if pid is not None:
            try:
                self.stop("immediate")
            except LocalPostgresError:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.5)
        shutil.rmtree(self.basedir, ignore_errors=True)

    def __enter__(self) -> LocalPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.destroy()
