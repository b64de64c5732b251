"""Keep a federation's EVM anchor in step with its ledger (``bfl-private round --chain``).

:func:`sync` anchors every block not yet anchored, has the validators that co-signed each
block approve its header from their accounts, and settles every closed or aborted round
(privacy spend and rewards) once its header is final. It is idempotent and resumes where
the chain stands, so a run that crashed part-way is caught up by the next one.

The federation directory gets ``chain.json`` (public, not in ``keys/``)::

    {"version": 1, "chain_id": 31337, "contract": "0x…", "deployer": "0x…",
     "validators": {"validator-0": "0x…", …}, "clients": {"client-0": "0x…", …}}

recording which node accounts act for the ledger's validators (the node's unlocked
accounts 1..n in sorted validator-id order; account 0 deploys and owns the contract) and
which derived address names each client (:func:`bfl_private.ledger.chain.client_address`).
An auditor needs none of it: :func:`chain_hook` derives the same mapping from the ledger
and the contract.

Honest limit: the validators' approvals are sent from this process through the node's
unlocked accounts, once per validator whose Ed25519 cosignature the block carries; on a
chain shared by organisations each validator would send its own ``approve_header``
(:meth:`AnchorContract.approve_header`) from its own node.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from web3 import Web3

from .ledger.chain import (
    AccountMap,
    AnchorContract,
    ChainHook,
    check_header,
    connect,
    epsilon_fixed,
    settlement_of,
)
from .ledger.errors import ChainMismatch, ChainUnavailable, MalformedRecord, VerificationError
from .ledger.store import DATABASE, Ledger, SQLiteStore

CHAIN_FILE = "chain.json"
CHAIN_FILE_VERSION = 1


@dataclass
class SyncReport:
    """What one :func:`sync` did."""

    contract: str
    chain_id: int
    deployed: bool
    anchored: list[int] = field(default_factory=list)
    """Heights of the blocks anchored (or finished) by this call."""
    settled: list[int] = field(default_factory=list)
    """Rounds settled by this call."""
    gas: list[tuple[str, int]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"contract": self.contract, "chain_id": self.chain_id, "deployed": self.deployed,
                "anchored": self.anchored, "settled": self.settled,
                "gas": sum(g for _, g in self.gas)}


def read_chain_file(directory: Path) -> dict[str, Any] | None:
    """The federation's ``chain.json``, None if it has none; MalformedRecord if unreadable."""
    path = Path(directory) / CHAIN_FILE
    if not path.exists():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MalformedRecord(f"{path}: {exc}") from None
    if not isinstance(record, dict) or record.get("version") != CHAIN_FILE_VERSION:
        raise MalformedRecord(f"{path}: not a version-{CHAIN_FILE_VERSION} chain record")
    missing = [k for k in ("chain_id", "contract", "deployer", "validators", "clients")
               if k not in record]
    if missing:
        raise MalformedRecord(f"{path}: missing {', '.join(missing)}")
    return record


def _write_chain_file(directory: Path, record: dict[str, Any]) -> None:
    path = Path(directory) / CHAIN_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _deploy(w3: Web3, directory: Path, ledger: Ledger) -> tuple[AnchorContract, AccountMap]:
    state = ledger.state
    validators = state.validators()
    accounts = list(w3.eth.accounts)
    if len(accounts) < len(validators) + 1:
        raise ChainUnavailable(f"the node offers {len(accounts)} unlocked accounts; a deployer "
                               f"and {len(validators)} validators need {len(validators) + 1}")
    mapping = AccountMap.for_federation(state.federation_id, validator_ids=list(validators),
                                        client_ids=list(state.clients()),
                                        validator_accounts=accounts[1:len(validators) + 1])
    anchor = AnchorContract.deploy(
        w3, deployer=accounts[0], quorum=state.quorum,
        validators=[mapping.validators[v] for v in sorted(validators)],
        rewards=state.as_dict()["rewards"])
    _write_chain_file(directory, {"version": CHAIN_FILE_VERSION, "chain_id": w3.eth.chain_id,
                                  "contract": anchor.address, "deployer": accounts[0],
                                  **mapping.to_json()})
    return anchor, mapping


def sync(directory: Path | str, url: str | None = None, *, w3: Web3 | None = None
         ) -> SyncReport:
    """Anchor, approve and settle every block of the ledger in ``directory`` not yet on chain.

    Give the node's ``url`` or an open ``w3`` (tests: :func:`~bfl_private.ledger.chain.in_process`).
    Deploys the contract on first use and records it in ``chain.json``. Raises ChainRevert,
    ChainMismatch (the chain anchors a different history) or ChainUnavailable.
    """
    directory = Path(directory)
    if w3 is None:
        if url is None:
            raise ValueError("give the node's url or a web3 connection")
        w3 = connect(url)
    with Ledger.open(directory) as ledger:
        record = read_chain_file(directory)
        if record is None:
            anchor, mapping = _deploy(w3, directory, ledger)
            deployer, deployed = anchor.owner(), True
        else:
            if record["chain_id"] != w3.eth.chain_id:
                raise ChainMismatch(f"{directory / CHAIN_FILE} names chain {record['chain_id']}, "
                                    f"the node is chain {w3.eth.chain_id}")
            anchor = AnchorContract.at(w3, record["contract"])
            mapping = AccountMap(record["validators"], record["clients"])
            deployer, deployed = record["deployer"], False
        report = SyncReport(anchor.address, w3.eth.chain_id, deployed)
        state = ledger.state
        unmapped = sorted((set(state.clients()) - set(mapping.clients))
                          | (set(state.validators()) - set(mapping.validators)))
        if unmapped:
            raise MalformedRecord(f"{directory / CHAIN_FILE}: no account for {unmapped}")
        if anchor.anchored() == 0:
            budgets = {mapping.clients[c]: epsilon_fixed(r["epsilon_budget"])
                       for c, r in state.clients().items()
                       if not anchor.is_client(mapping.clients[c])}
            anchor.register_clients(budgets, sender=deployer)
        by_key = {r["key_id"]: name for name, r in state.validators().items()}
        head = ledger.height if ledger.height is not None else -1
        for height in range(max(0, anchor.anchored() - 1), head + 1):
            block = ledger.block(height)
            header = block.header
            on_chain = anchor.header(header.hash())
            if on_chain is None:
                anchor.propose_header(header, sender=deployer)
                on_chain = anchor.header(header.hash())
            check_header(on_chain, header)
            assert on_chain is not None
            if not on_chain.finalised:
                for name in sorted(by_key[k] for k in block.signatures):
                    account = mapping.validators[name]
                    if not anchor.approved_by(header.hash(), account):
                        anchor.approve_header(header, validator=account)
                report.anchored.append(height)
            settlement = settlement_of(ledger.entries(block.first_entry, header.size), mapping)
            if settlement is not None and settlement.round > anchor.last_round():
                anchor.settle_round(header, settlement, sender=deployer)
                report.settled.append(settlement.round)
        report.gas = list(anchor.gas_used)
        return report


def chain_hook(directory: Path | str, url: str, address: str | None = None) -> ChainHook:
    """The verifier's chain check for the ledger in ``directory`` against the contract at
    ``address`` (default: the one ``chain.json`` records) on the node at ``url``."""
    directory = Path(directory)
    if address is None:
        record = read_chain_file(directory)
        if record is None:
            raise ChainUnavailable(f"{directory} has no {CHAIN_FILE}: give --contract ADDRESS")
        address = record["contract"]
    anchor = AnchorContract.at(connect(url), address)
    try:
        store = SQLiteStore.open(directory / DATABASE, read_only=True)
        try:
            row = store.last_block_row()
        finally:
            store.close()
    except VerificationError:
        row = None  # the verifier's storage check fails first and names the damage
    return ChainHook(anchor, head_height=-1 if row is None else row[0])
