"""Keep a federation's EVM anchor in step with its ledger (``bfl-private round --chain``).

:func:`sync` anchors every block not yet anchored, has the validators that co-signed each
block approve its header from their accounts, and settles every closed or aborted round
(privacy spend and rewards) once its header is final. It is idempotent and resumes where
the chain stands, so a run that crashed part-way is caught up by the next one.

The federation directory gets ``chain.json`` (public, not in ``parties/``)::

    {"version": 2, "chain_id": 31337, "contract": "0x…", "deployer": "0x…",
     "validators": {"validator-0": "0x…", …}, "clients": {"client-0": "0x…", …}}

recording the node account that deploys and owns the contract (the node's first unlocked
account), each validator's account and the derived address that names each client
(:func:`bfl_private.ledger.chain.client_address`). An auditor needs none of it:
:func:`chain_hook` derives the same mapping from the ledger and the contract.

Validators' accounts are their own secp256k1 keys, ``parties/<validator>/chain.secp256k1``
(made by the validator's party object in its own folder on first use, mode 0600 like every
key): each approval is a transaction the validator's
key signs, sent raw, so the quorum on chain is a quorum of keys the node never held. On a
development chain the deployer tops up their gas (:data:`VALIDATOR_FUNDING`); elsewhere
fund them like any account. In this embedded federation each validator's key sits in its
party folder beside its Ed25519 identity and approves from this process; on a chain
shared by organisations each validator would call
:meth:`~bfl_private.ledger.chain.AnchorContract.approve_header` with its key on its own
machine.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from .keyring import KeyringError
from .parties import CHAIN_KEY_FILE, ValidatorParty
from .ledger.chain import (
    AccountMap,
    AnchorContract,
    ChainHook,
    check_header,
    connect,
    epsilon_fixed,
    fund,
    settlement_of,
)
from .ledger.errors import ChainMismatch, ChainUnavailable, MalformedRecord, VerificationError
from .ledger.store import DATABASE, Ledger, SQLiteStore

CHAIN_FILE = "chain.json"
CHAIN_FILE_VERSION = 2
VALIDATOR_FUNDING = 10**18
"""Wei the deployer sends a validator whose balance fell below a tenth of it (1 ether)."""


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


def validator_keys(directory: Path, names: list[str], *, create: bool) -> dict[str, LocalAccount]:
    """Each validator's secp256k1 key, asked of its party (``parties/<name>/chain.secp256k1``);
    with ``create``, a fresh one (OS randomness) for a validator that has none. KeyringError
    if one is missing, exposed to other users or not a key."""
    keys: dict[str, LocalAccount] = {}
    for name in names:
        raw = ValidatorParty(directory, name).chain_key(create=create)
        try:
            keys[name] = Account.from_key(raw)
        except ValueError as exc:
            raise KeyringError(f"{name}'s chain key {CHAIN_KEY_FILE} is not a secp256k1 private key: "
                               f"{exc}") from None
    return keys


def _top_up(w3: Web3, deployer: str, account: str) -> None:
    if w3.eth.get_balance(account) < VALIDATOR_FUNDING // 10:
        fund(w3, sender=deployer, account=account, wei=VALIDATOR_FUNDING)


def _deploy(w3: Web3, directory: Path, ledger: Ledger) -> tuple[AnchorContract, AccountMap]:
    state = ledger.state
    validators = sorted(state.validators())
    accounts = list(w3.eth.accounts)
    if not accounts:
        raise ChainUnavailable("the node offers no unlocked account to deploy the contract from")
    keys = validator_keys(directory, validators, create=True)
    mapping = AccountMap.for_federation(state.federation_id, validator_ids=validators,
                                        client_ids=list(state.clients()),
                                        validator_accounts=[keys[v].address for v in validators])
    anchor = AnchorContract.deploy(
        w3, deployer=accounts[0], quorum=state.quorum,
        validators=[mapping.validators[v] for v in validators],
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
        keys = validator_keys(directory, sorted(mapping.validators), create=False)
        for name, key in keys.items():
            if key.address != mapping.validators[name]:
                raise ChainMismatch(f"{name}'s key in its party folder signs as {key.address}; "
                                    f"{directory / CHAIN_FILE} maps it to {mapping.validators[name]}")
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
                    if not anchor.approved_by(header.hash(), keys[name].address):
                        _top_up(w3, deployer, keys[name].address)
                        anchor.approve_header(header, validator=keys[name])
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
