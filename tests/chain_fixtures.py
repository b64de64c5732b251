"""Shared fixtures of the chain tests: one real federation ledger per session, copied per test.

The ledger comes from the application itself (``run_command``): 5 clients, 3 rounds of the
plain protocol with dropouts and one malicious client, so its rounds hold survivors,
dropouts and rejected clients, and the reward contract mints and penalises.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from bfl_private.ledger.chain import connect, in_process
from bfl_private.ledger.errors import ChainUnavailable
from web3 import Web3

from bfl_private.chain_sync import sync
from bfl_private.runner import RoundOptions, run_command

LEDGER_OPTIONS = RoundOptions(epsilon=1.0, clients=5, rounds=3, seed=3, protocol="plain",
                              dropout=0.2, malicious=1)
ANVIL_ENV = "BFL_ANVIL"
"""Path of an anvil binary; else ``anvil`` on PATH or ``node_modules/.bin/anvil``."""
CHAIN_URL_ENV = "BFL_CHAIN_URL"
"""URL of a running node (CI starts anvil and sets it); else the tests start anvil."""


@pytest.fixture(scope="session")
def federation_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("chain-template") / "federation"
    run_command(directory, LEDGER_OPTIONS, quiet=True)
    return directory


@pytest.fixture
def federation(federation_template: Path, tmp_path: Path) -> Path:
    """A private copy of the session's ledger (tests add chain.json to it)."""
    return Path(shutil.copytree(federation_template, tmp_path / "federation"))


@pytest.fixture(scope="session")
def _synced_template(federation_template: Path, tmp_path_factory: pytest.TempPathFactory
                     ) -> tuple[Path, Web3, Any]:
    directory = Path(shutil.copytree(federation_template,
                                     tmp_path_factory.mktemp("chain-synced") / "federation"))
    w3 = in_process()
    sync(directory, w3=w3)
    tester = w3.provider.ethereum_tester  # type: ignore[attr-defined]
    return directory, w3, tester.take_snapshot()


@pytest.fixture
def synced(_synced_template: tuple[Path, Web3, Any], tmp_path: Path) -> tuple[Path, Web3]:
    """A copy of the session's ledger already anchored on an in-process chain (the chain
    is rolled back to that point for every test)."""
    directory, w3, snapshot = _synced_template
    w3.provider.ethereum_tester.revert_to_snapshot(snapshot)  # type: ignore[attr-defined]
    return Path(shutil.copytree(directory, tmp_path / "federation")), w3


def _anvil_binary() -> str | None:
    candidates = [os.environ.get(ANVIL_ENV), shutil.which("anvil"),
                  str(Path(__file__).resolve().parents[1] / "node_modules" / ".bin" / "anvil")]
    return next((c for c in candidates if c and Path(c).is_file()), None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_node(url: str, process: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            connect(url, timeout=2)
            return
        except ChainUnavailable:
            gone = process is not None and process.poll() is not None
            if gone or time.monotonic() > deadline:
                raise RuntimeError(f"no Ethereum node answers at {url}") from None
            time.sleep(0.2)


@pytest.fixture(scope="session")
def anvil_url() -> Iterator[str]:
    """A real node on loopback: the one CI started, or an anvil this fixture starts."""
    url = os.environ.get(CHAIN_URL_ENV)
    if url:
        _wait_for_node(url)
        yield url
        return
    binary = _anvil_binary()
    if binary is None:
        pytest.skip(f"no anvil binary (set {ANVIL_ENV}, put anvil on PATH, or "
                    f"`npm install @foundry-rs/anvil`; or set {CHAIN_URL_ENV})")
    port = _free_port()
    process = subprocess.Popen([binary, "--host", "127.0.0.1", "--port", str(port),
                                "--accounts", "10", "--silent"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_node(url, process)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)
