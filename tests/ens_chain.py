"""A local EVM with our own ENS-compatible contracts, for tests and the ENS benchmark.

`Anvil` runs Foundry's anvil (installed from npm into node_modules by `make test`) on a free
port. `EnsChain` deploys the contracts of tests/chain/contracts (compiled artifacts in
tests/chain/artifacts.json; `node tests/chain/build.js` rebuilds them): a registry, a
BaseRegistrar and a NameWrapper stand-in with expiries, a public resolver, and a Universal
Resolver whose code is copied to the fixed address web3's ENS module calls, so the module runs
unmodified. Names are registered, wrapped, expired, transferred and given records here with
ordinary transactions from anvil's unlocked accounts.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ens.constants import UNIVERSAL_RESOLVER_ADDR
from ens.utils import label_to_hash, normal_name_to_hash
from web3 import HTTPProvider, Web3
from web3.contract import Contract

ROOT = Path(__file__).resolve().parent.parent
ARTIFACTS = ROOT / "tests" / "chain" / "artifacts.json"
YEAR_S = 365 * 24 * 3600


def anvil_binary() -> str:
    path = ROOT / "node_modules" / ".bin" / "anvil"
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `npm ci` at the repository root "
                           "(`make test` does it) to install anvil from npm")
    return str(path)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Anvil:
    """An anvil node in a subprocess on 127.0.0.1 (automine: every transaction is a block)."""

    def __init__(self, log_path: Path, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 20) -> Anvil:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [anvil_binary(), "--port", str(self.port), "--host", "127.0.0.1",
             "--accounts", "10", "--chain-id", "31337"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "NO_COLOR": "1"})
        w3 = Web3(HTTPProvider(self.url, request_kwargs={"timeout": 2}))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"anvil exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            try:
                if w3.eth.chain_id == 31337:
                    return self
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"anvil did not answer on {self.url} within {timeout} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@dataclass
class Registered:
    name: str
    owner: str
    wrapped: bool


def _artifacts() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(ARTIFACTS.read_text())["contracts"]
    return data


class EnsChain:
    """Our ENS contracts deployed on a node; helpers that make names as the tests need them."""

    def __init__(self, url: str):
        self.w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": 10}))
        self.accounts: list[str] = list(self.w3.eth.accounts)
        self.deployer = self.accounts[0]
        self._code = _artifacts()
        self.registry = self._deploy("ENSRegistry")
        eth_node = normal_name_to_hash("eth")
        self.registrar = self._deploy("BaseRegistrar", self.registry.address, eth_node)
        self._send(self.registry.functions.setSubnodeOwner(
            b"\0" * 32, label_to_hash("eth"), self.registrar.address))
        self.wrapper = self._deploy("NameWrapper", self.registrar.address)
        self.resolver = self._deploy("PublicResolver", self.registry.address,
                                     self.wrapper.address)
        deployed_ur = self._deploy("UniversalResolver", self.registry.address)
        code = self.w3.eth.get_code(deployed_ur.address)
        self.w3.provider.make_request("anvil_setCode",  # type: ignore[arg-type]
                                      [UNIVERSAL_RESOLVER_ADDR, code.to_0x_hex()])
        self.universal_resolver = self.w3.eth.contract(
            address=UNIVERSAL_RESOLVER_ADDR, abi=self._code["UniversalResolver"]["abi"])

    def env(self, url: str | None = None) -> dict[str, str]:
        """The worker's settings that point it at this chain."""
        return {
            "ETH_RPC_URL": url or str(self.w3.provider.endpoint_uri),  # type: ignore[attr-defined]
            "JOB_ENS_REGISTRY_ADDRESS": self.registry.address,
            "JOB_ENS_BASE_REGISTRAR_ADDRESS": self.registrar.address,
            "JOB_ENS_NAME_WRAPPER_ADDRESS": self.wrapper.address,
        }

    def _deploy(self, name: str, *args: Any) -> Contract:
        spec = self._code[name]
        factory = self.w3.eth.contract(abi=spec["abi"], bytecode=spec["bytecode"])
        tx = factory.constructor(*args).transact({"from": self.deployer})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        assert receipt["status"] == 1, f"deploying {name} failed"
        return self.w3.eth.contract(address=receipt["contractAddress"], abi=spec["abi"])

    def _send(self, call: Any, sender: str | None = None) -> None:
        tx = call.transact({"from": sender or self.deployer})
        receipt = self.w3.eth.wait_for_transaction_receipt(tx)
        assert receipt["status"] == 1, f"transaction {call.fn_name} failed"

    @staticmethod
    def token_id(label: str) -> int:
        return int.from_bytes(label_to_hash(label), "big")

    def register(self, name: str, owner: str, *, duration: int = YEAR_S, wrapped: bool = False,
                 resolver: bool = True, texts: dict[str, str] | None = None,
                 address: str | None = None) -> Registered:
        """Register a .eth second-level name; optionally set the resolver, records, wrap it."""
        label, tld = name.split(".", 1)
        assert tld == "eth", name
        node = normal_name_to_hash(name)
        self._send(self.registrar.functions.register(self.token_id(label), owner, duration))
        if resolver:
            self._send(self.registry.functions.setResolver(node, self.resolver.address), owner)
        if wrapped:
            self._send(self.registrar.functions.setApprovalForAll(self.wrapper.address, True),
                       owner)
            self._send(self.wrapper.functions.wrapETH2LD(label, owner, 0, self.resolver.address),
                       owner)
        if resolver:
            for key, value in (texts or {}).items():
                self._send(self.resolver.functions.setText(node, key, value), owner)
            if address:
                self._send(self.resolver.functions.setAddr(node, address), owner)
        return Registered(name, owner, wrapped)

    def expire(self, name: str, seconds_ago: int = 100 * 24 * 3600) -> None:
        """Move the name's expiry into the past (beyond the 90-day grace period)."""
        label = name.split(".", 1)[0]
        block = self.w3.eth.get_block("latest")
        self._send(self.registrar.functions.setExpiry(
            self.token_id(label), int(block["timestamp"]) - seconds_ago))

    def transfer(self, name: str, current: Registered | str, new_owner: str) -> None:
        """Transfer the name on chain (registrar token, or the wrapped token when wrapped)."""
        label = name.split(".", 1)[0]
        holder = current.owner if isinstance(current, Registered) else current
        if isinstance(current, Registered) and current.wrapped:
            node_id = int.from_bytes(normal_name_to_hash(name), "big")
            self._send(self.wrapper.functions.safeTransferFrom(holder, new_owner, node_id, 1,
                                                               b""), holder)
        else:
            self._send(self.registrar.functions.transferFrom(holder, new_owner,
                                                             self.token_id(label)), holder)


class RpcProxy:
    """A recording JSON-RPC proxy in front of a node: counts every HTTP request and the calls
    in it (with its arrival time), and can stop answering (`down`: the connection is dropped
    without a response, as when the node is stopped) and come back."""

    def __init__(self, upstream: str):
        import http.server
        import threading
        import urllib.request

        self.upstream = upstream
        self.requests: list[tuple[float, int]] = []  # (monotonic arrival, calls in it)
        self.dropped = 0
        self.down = False
        self._answers_left: int | None = None
        self._lock = threading.Lock()
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                arrived = time.monotonic()
                with proxy._lock:
                    if proxy._answers_left is not None:
                        if proxy._answers_left <= 0:
                            proxy.down, proxy._answers_left = True, None
                        else:
                            proxy._answers_left -= 1
                if proxy.down:
                    with proxy._lock:
                        proxy.dropped += 1
                    self.close_connection = True
                    return
                payload = json.loads(body)
                with proxy._lock:
                    proxy.requests.append(
                        (arrived, len(payload) if isinstance(payload, list) else 1))
                req = urllib.request.Request(proxy.upstream, data=body,
                                             headers={"Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=30) as resp:
                    answer = resp.read()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def fail_after(self, answers: int) -> None:
        """Answer this many more requests, then go down."""
        with self._lock:
            self._answers_left = answers

    def calls(self) -> int:
        with self._lock:
            return sum(n for _, n in self.requests)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    def times(self) -> list[float]:
        with self._lock:
            return [t for t, _ in self.requests]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
