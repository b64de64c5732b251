"""The ledger on an EVM chain: block anchors, privacy budgets and rewards, through web3.

The embedded ledger serves one machine. Organisations that share no machine anchor its
blocks on an EVM chain that none of them runs alone, and run the budget and reward
contracts there too. The contract, ``contracts/bfl_anchor.vy`` (Vyper), mirrors the rules
of :mod:`bfl_private.ledger.contracts` for budgets and rewards and adds a block anchor that
is final only when a quorum of validator *accounts* approved the header hash from their
own accounts. This module deploys it, anchors blocks, approves them, settles rounds and
reads the chain state back; :class:`ChainHook` is the verifier's extra numbered check.

Mapping of ledger ids to Ethereum accounts (the same on every chain, so an auditor needs
only the ledger, the node URL and the contract address):

* validators: registered at deployment in the order of their sorted ledger ids, so
  ``validators(i)`` on chain is the account of the i-th validator id. A validator's
  account is its own secp256k1 key (:class:`~eth_account.signers.local.LocalAccount`):
  its approvals are transactions it signs itself, so the node holds nothing of it and any
  node that relays raw transactions will do.
* clients: :func:`client_address`, the last 20 bytes of
  ``keccak256("bfl-private client" 0x00 federation_id 0x00 client_id)``. Clients never
  send transactions; the address only names their budget and token balance.

Fixed point: epsilon values are stored as ``ceil(epsilon x 10^9)`` of the decimal the
canonical JSON (RFC 8785, shortest round-trip form) spells, so a posted spend is never
below the ledger's claim. The on-chain budget check therefore works at 10^-9 resolution:
a claim within 10^-9 above a budget that is not a multiple of 10^-9 would pass on chain
while the embedded contract refuses it (the embedded ledger is checked first, so such a
round is never posted).

Errors: a revert on either backend (eth-tester's ``TransactionFailed``, a node's
``ContractLogicError``) is :class:`~bfl_private.ledger.errors.ChainRevert`; an unreachable
node or a missing contract is ``ChainUnavailable``; chain state that differs from the
ledger is ``ChainMismatch``. Reverts and mismatches are VerificationErrors; an unreachable
chain is not (it proves nothing about the ledger), so it leaves the verifier's
:func:`~bfl_private.ledger.verify.run_checks` as an exception instead of failing check 11.
"""
from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_CEILING, Decimal
from pathlib import Path
from typing import Any

from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed
from eth_utils import keccak, to_checksum_address
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3Exception

from .blocks import BlockHeader
from .contracts import LedgerState
from .entries import ABORT, ATTESTATION, ROUND_CLOSE, SUBMISSION, Entry
from .errors import ChainMismatch, ChainRevert, ChainUnavailable, MalformedRecord
from .verify import BlockContext, VerifierHook

CONTRACT_SOURCE = Path(__file__).with_name("contracts") / "bfl_anchor.vy"
CONTRACT_ARTIFACT = CONTRACT_SOURCE.with_suffix(".json")
EPSILON_SCALE = 10**9
"""Fixed-point scale of epsilon on chain (9 decimal places)."""
CLIENT_BATCH = 200

Sender = str | LocalAccount
"""Who sends a transaction: the address of an account the node manages (the deployer on a
development node), or a local key that signs the transaction itself (validators)."""
"""Clients registered per transaction (keeps each well under a 30M block gas limit)."""


def epsilon_fixed(value: float) -> int:
    """``ceil(value x 10^9)`` of the decimal the canonical JSON spells for ``value``.

    Rounding up means the chain never under-reports a spend. MalformedRecord for a bool,
    a non-finite or a negative number.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise MalformedRecord(f"epsilon must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise MalformedRecord(f"epsilon must be finite, got {value!r}")
    if value < 0:
        raise MalformedRecord(f"epsilon must be >= 0, got {value!r}")
    # repr() is the shortest round-trip decimal, the digits RFC 8785 writes.
    scaled = Decimal(repr(value)) * EPSILON_SCALE
    return int(scaled.to_integral_value(rounding=ROUND_CEILING))


def client_address(federation_id: str, client_id: str) -> str:
    """The checksummed account that names a client's budget and balance on chain."""
    digest = keccak(b"bfl-private client\x00" + federation_id.encode("utf-8") + b"\x00"
                    + client_id.encode("utf-8"))
    return to_checksum_address(digest[12:])


# --- compiled artefact ------------------------------------------------------------------


def compile_contract(source: Path = CONTRACT_SOURCE) -> dict[str, Any]:
    """Compile the Vyper source (needs the ``vyper`` package) into the artefact's form."""
    import vyper

    text = source.read_text(encoding="utf-8")
    out = vyper.compile_code(text, contract_path=source.name,
                             output_formats=["abi", "bytecode", "bytecode_runtime"])
    return {
        "compiler": f"vyper {vyper.__version__}",
        "source": source.name,
        "source_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "abi": out["abi"],
        "bytecode": out["bytecode"],
        "bytecode_runtime": out["bytecode_runtime"],
    }


def load_artifact(path: Path = CONTRACT_ARTIFACT, *, source: Path = CONTRACT_SOURCE
                  ) -> dict[str, Any]:
    """The committed ABI and bytecode; MalformedRecord if stale against the source.

    Running against a chain needs no compiler; ``tests/test_chain_contract.py``
    recompiles and compares, so the artefact cannot drift from the source unnoticed.
    """
    try:
        artifact = json.loads(path.read_text(encoding="utf-8"))
        digest = hashlib.sha256(source.read_bytes()).hexdigest()
    except (OSError, ValueError) as exc:
        raise MalformedRecord(f"contract artefact {path}: {exc}") from None
    if artifact.get("source_sha256") != digest:
        raise MalformedRecord(f"contract artefact {path} was compiled from another version "
                              f"of {source.name}; regenerate it with "
                              f"`python -m bfl_private.ledger.chain --compile`")
    return artifact


# --- connection -------------------------------------------------------------------------


def connect(url: str, *, timeout: float = 30.0) -> Web3:
    """A web3 connection to the node at ``url`` (HTTP JSON-RPC); ChainUnavailable if none."""
    w3 = Web3(Web3.HTTPProvider(url, request_kwargs={"timeout": timeout}))
    if not w3.is_connected():
        raise ChainUnavailable(f"no Ethereum JSON-RPC node answers at {url}")
    return w3


def in_process() -> Web3:
    """A fresh in-process chain (eth-tester on py-evm) with ten funded unlocked accounts."""
    return Web3(Web3.EthereumTesterProvider())


def _reason(exc: Exception) -> str:
    """The revert reason a backend reports, without the backend's prefix."""
    message = getattr(exc, "message", None) or (exc.args[0] if exc.args else str(exc))
    if isinstance(message, bytes):
        message = message.decode("utf-8", "replace")
    return str(message).removeprefix("execution reverted: ").removeprefix("execution reverted")


@dataclass(frozen=True)
class AnchoredHeader:
    """A block header as the contract holds it."""

    height: int
    prev_hash: bytes
    log_size: int
    merkle_root: bytes
    state_root: bytes
    approvals: int
    finalised: bool


@dataclass(frozen=True)
class Settlement:
    """What one round posts on chain: privacy spend and, for a closed round, rewards."""

    round: int
    closed: bool
    epsilon: Mapping[str, int] = field(default_factory=dict)
    """Client address -> cumulative epsilon in fixed point."""
    survivors: Sequence[tuple[str, int]] = ()
    """(client address, data weight) of each survivor."""
    rejected: Sequence[str] = ()
    dropouts: Sequence[str] = ()
    attestations: Sequence[tuple[str, bool, int]] = ()
    """(validator address, accepted, quality ppm) of each attestation."""


class AnchorContract:
    """One deployed ``bfl_anchor`` contract, reached through web3.

    Build with :meth:`deploy` or :meth:`at`. Every write waits for its receipt and
    raises ChainRevert (with the contract's reason) when the transaction reverts.
    """

    def __init__(self, w3: Web3, address: str, artifact: Mapping[str, Any]) -> None:
        """Internal: use :meth:`deploy` or :meth:`at`."""
        self.w3 = w3
        self.address = to_checksum_address(address)
        self.contract = w3.eth.contract(address=self.address, abi=artifact["abi"])
        self.gas_limit = w3.eth.get_block("latest")["gasLimit"]
        """Gas limit of every write: the node's block gas limit (see :func:`_send`)."""
        self.gas_used: list[tuple[str, int]] = []
        """(function, gas) of every transaction this object sent, oldest first."""

    @classmethod
    def deploy(cls, w3: Web3, *, deployer: Sender, quorum: int, validators: Sequence[str],
               rewards: Mapping[str, int]) -> AnchorContract:
        """Deploy a contract owned by ``deployer`` with validator accounts in order."""
        artifact = load_artifact()
        factory = w3.eth.contract(abi=artifact["abi"], bytecode=artifact["bytecode"])
        constructor = factory.constructor(
            quorum, [to_checksum_address(v) for v in validators], rewards["reward_per_round"],
            rewards["penalty_invalid"], rewards["penalty_dropout"], rewards["validator_reward"])
        receipt = _send(w3, "deploy", constructor, deployer)
        anchor = cls(w3, receipt["contractAddress"], artifact)
        anchor.gas_used.append(("deploy", receipt["gasUsed"]))
        return anchor

    @classmethod
    def at(cls, w3: Web3, address: str) -> AnchorContract:
        """The contract at ``address``; ChainUnavailable unless it runs this bytecode."""
        artifact = load_artifact()
        try:
            code = bytes(w3.eth.get_code(to_checksum_address(address)))
        except (ValueError, Web3Exception) as exc:
            raise ChainUnavailable(f"cannot read code at {address}: {exc}") from None
        if code != bytes.fromhex(artifact["bytecode_runtime"].removeprefix("0x")):
            raise ChainUnavailable(f"no bfl_anchor contract at {address} on chain "
                                   f"{w3.eth.chain_id} ({len(code)} bytes of other code)")
        return cls(w3, address, artifact)

    def _transact(self, name: str, *args: Any, sender: Sender) -> dict[str, Any]:
        receipt = _send(self.w3, name, getattr(self.contract.functions, name)(*args), sender,
                        gas=self.gas_limit)
        self.gas_used.append((name, receipt["gasUsed"]))
        return receipt

    def _call(self, name: str, *args: Any) -> Any:
        try:
            return getattr(self.contract.functions, name)(*args).call()
        except (ContractLogicError, TransactionFailed):
            raise
        except (Web3Exception, OSError) as exc:
            raise ChainUnavailable(f"reading {name} from {self.address}: {exc}") from None

    # --- writes -------------------------------------------------------------------------

    def register_clients(self, budgets: Mapping[str, int], *, sender: Sender) -> None:
        """Register client addresses with their lifetime budgets (fixed point)."""
        items = sorted(budgets.items())
        for start in range(0, len(items), CLIENT_BATCH):
            batch = items[start:start + CLIENT_BATCH]
            self._transact("register_clients", [a for a, _ in batch], [b for _, b in batch],
                           sender=sender)

    def propose_header(self, header: BlockHeader, *, sender: Sender) -> None:
        """Anchor ``header`` (not final until a validator quorum approves it)."""
        self._transact("propose_header", header.hash(), header.height, header.prev_hash,
                       header.size, header.root, header.state_root, sender=sender)

    def approve_header(self, header: BlockHeader, *, validator: Sender) -> None:
        """Approve ``header`` from a validator's account, after checking that the chain
        holds exactly this header's fields under its hash (ChainMismatch otherwise)."""
        check_header(self.header(header.hash()), header)
        self._transact("approve_header", header.hash(), sender=validator)

    def settle_round(self, header: BlockHeader, settlement: Settlement, *, sender: Sender) -> None:
        """Post a round's spend and rewards against its finalised block header."""
        survivors = list(settlement.survivors)
        attestations = list(settlement.attestations)
        self._transact(
            "settle_round", header.hash(), settlement.round, settlement.closed,
            list(settlement.epsilon), list(settlement.epsilon.values()),
            [a for a, _ in survivors], [w for _, w in survivors],
            list(settlement.rejected), list(settlement.dropouts),
            [a for a, _, _ in attestations], [ok for _, ok, _ in attestations],
            [q for _, _, q in attestations], sender=sender)

    # --- reads --------------------------------------------------------------------------

    def header(self, header_hash: bytes) -> AnchoredHeader | None:
        """The anchored header with this hash, None if never proposed."""
        record = self._call("headers", header_hash)
        if record[2] == 0:
            return None
        return AnchoredHeader(record[0], bytes(record[1]), record[2], bytes(record[3]),
                              bytes(record[4]), record[5], record[6])

    def anchored(self) -> int:
        """Number of headers anchored (the next height to propose)."""
        return self._call("anchored")

    def last_round(self) -> int:
        return self._call("last_round")

    def quorum(self) -> int:
        return self._call("quorum")

    def owner(self) -> str:
        return self._call("owner")

    def validators(self) -> list[str]:
        """Validator accounts in registration order (sorted ledger validator ids)."""
        accounts: list[str] = []
        while True:
            try:
                accounts.append(self._call("validators", len(accounts)))
            except (ContractLogicError, TransactionFailed):
                return accounts

    def approved_by(self, header_hash: bytes, validator: str) -> bool:
        return self._call("approved_by", header_hash, validator)

    def is_client(self, address: str) -> bool:
        return self._call("is_client", address)

    def epsilon_spent(self, address: str) -> int:
        return self._call("epsilon_spent", address)

    def epsilon_budget(self, address: str) -> int:
        return self._call("epsilon_budget", address)

    def balance_of(self, address: str) -> int:
        return self._call("balanceOf", address)


def _address(sender: Sender) -> str:
    return to_checksum_address(sender if isinstance(sender, str) else sender.address)


def _fees(w3: Web3) -> dict[str, int]:
    """EIP-1559 fee fields of a locally signed transaction: twice the latest base fee plus
    the node's suggested tip, so it stays includable if the base fee rises meanwhile."""
    tip = w3.eth.max_priority_fee
    return {"maxPriorityFeePerGas": tip,
            "maxFeePerGas": 2 * w3.eth.get_block("latest")["baseFeePerGas"] + tip}


def _send(w3: Web3, name: str, call: Any, sender: Sender, *, gas: int | None = None
          ) -> dict[str, Any]:
    """Send one transaction from ``sender`` and wait for it; ChainRevert if it reverts.

    A node-managed sender goes through ``eth_sendTransaction``; a local key signs the
    transaction here and sends it raw. With ``gas`` given, the call is first run once as
    ``eth_call`` (a revert raises there with the contract's reason on every backend) and
    then sent with that gas limit, instead of letting web3 estimate gas: py-evm's
    estimator re-executes the call a dozen times in a binary search, which made estimation
    most of the in-process cost.
    """
    transaction: dict[str, Any] = {"from": _address(sender)}
    try:
        if gas is not None:
            call.call(transaction)
            transaction["gas"] = gas
        if isinstance(sender, str):
            tx_hash = call.transact(transaction)
        else:
            transaction.update(_fees(w3), nonce=w3.eth.get_transaction_count(sender.address, "pending"),
                               chainId=w3.eth.chain_id)
            signed = sender.sign_transaction(call.build_transaction(transaction))
            tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    except (ContractLogicError, TransactionFailed) as exc:
        raise ChainRevert(f"{name}: reverted: {_reason(exc)}") from None
    except (Web3Exception, OSError) as exc:  # node gone, RPC error, receipt timeout
        raise ChainUnavailable(f"{name}: {type(exc).__name__}: {exc}") from None
    if receipt["status"] != 1:
        raise ChainRevert(f"{name}: transaction {tx_hash.hex()} reverted")
    return dict(receipt)


def fund(w3: Web3, *, sender: str, account: str, wei: int) -> None:
    """Send ``wei`` of the chain's currency from the node-managed ``sender`` to ``account``
    (validators' gas on a development chain); ChainUnavailable if the node refuses."""
    try:
        tx_hash = w3.eth.send_transaction({"from": to_checksum_address(sender),
                                           "to": to_checksum_address(account), "value": wei})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    except (ValueError, TransactionFailed, Web3Exception, OSError) as exc:
        raise ChainUnavailable(f"funding {account} from {sender}: {type(exc).__name__}: {exc}") from None
    if receipt["status"] != 1:
        raise ChainUnavailable(f"funding {account} from {sender}: transaction {tx_hash.hex()} failed")


def check_header(anchored: AnchoredHeader | None, header: BlockHeader) -> None:
    """ChainMismatch unless the chain holds exactly ``header``'s fields under its hash."""
    where = f"block {header.height} header {header.hash().hex()}"
    if anchored is None:
        raise ChainMismatch(f"{where} is not anchored on chain")
    expected = (header.height, header.prev_hash, header.size, header.root, header.state_root)
    found = (anchored.height, anchored.prev_hash, anchored.log_size, anchored.merkle_root,
             anchored.state_root)
    names = ("height", "prev hash", "log size", "Merkle root", "state root")
    differ = [n for n, a, b in zip(names, expected, found) if a != b]
    if differ:
        raise ChainMismatch(f"{where}: on chain its {', '.join(differ)} differ")


# --- ledger -> chain --------------------------------------------------------------------


@dataclass(frozen=True)
class AccountMap:
    """Ledger id -> Ethereum account of every validator and client of one federation."""

    validators: Mapping[str, str]
    clients: Mapping[str, str]

    @classmethod
    def for_federation(cls, federation_id: str, *, validator_ids: Sequence[str],
                       client_ids: Sequence[str], validator_accounts: Sequence[str]
                       ) -> AccountMap:
        """Validators take ``validator_accounts`` in sorted-id order; clients are derived."""
        ordered = sorted(validator_ids)
        if len(validator_accounts) != len(ordered):
            raise ChainMismatch(f"{len(ordered)} validators but {len(validator_accounts)} "
                                f"validator accounts")
        return cls(
            dict(zip(ordered, (to_checksum_address(a) for a in validator_accounts))),
            {c: client_address(federation_id, c) for c in sorted(client_ids)},
        )

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"validators": dict(self.validators), "clients": dict(self.clients)}


def settlement_of(entries: Sequence[Entry], accounts: AccountMap) -> Settlement | None:
    """The settlement of the round a block closes or aborts; None for other blocks."""
    weights = {e.payload["client"]: e.payload["data_weight"]
               for e in entries if e.type == SUBMISSION}
    for entry in entries:
        if entry.type not in (ROUND_CLOSE, ABORT):
            continue
        p = entry.payload
        epsilon = {accounts.clients[c]: epsilon_fixed(v)
                   for c, v in sorted(p["cumulative_epsilon"].items())}
        if entry.type == ABORT:
            return Settlement(round=entry.round, closed=False, epsilon=epsilon)
        attestations = [(accounts.validators[e.payload["validator"]],
                         e.payload["verdict"] == "accept", e.payload["quality_ppm"])
                        for e in entries if e.type == ATTESTATION]
        return Settlement(
            round=entry.round, closed=True, epsilon=epsilon,
            survivors=[(accounts.clients[c], weights[c]) for c in sorted(p["survivors"])],
            rejected=[accounts.clients[c] for c in sorted(p["rejected"])],
            dropouts=[accounts.clients[c] for c in sorted(p["dropouts"])],
            attestations=attestations)
    return None


def compare_state(anchor: AnchorContract, state: LedgerState, accounts: AccountMap) -> None:
    """ChainMismatch naming every client or validator whose on-chain epsilon, budget or
    balance differs from the ledger state ``state`` (a LedgerState)."""
    differences = []
    for name, record in sorted(state.clients().items()):
        address = accounts.clients[name]
        figures = (("epsilon", epsilon_fixed(record["epsilon_spent"]),
                    anchor.epsilon_spent(address)),
                   ("budget", epsilon_fixed(record["epsilon_budget"]),
                    anchor.epsilon_budget(address)),
                   ("balance", record["balance"], anchor.balance_of(address)))
        differences += [f"client {name!r} {what}: ledger {mine}, chain {theirs}"
                        for what, mine, theirs in figures if mine != theirs]
    for name, record in sorted(state.validators().items()):
        theirs = anchor.balance_of(accounts.validators[name])
        if theirs != record["balance"]:
            differences.append(f"validator {name!r} balance: ledger {record['balance']}, "
                               f"chain {theirs}")
    if differences:
        raise ChainMismatch("on-chain state differs from the ledger: " + "; ".join(differences))


class ChainHook(VerifierHook):
    """Verifier check: every block header final on chain with equal fields, and on-chain
    epsilon, budgets and balances equal to the ledger's after the last block.

    Reads only the ledger, the node and the contract: the validator accounts come from
    the contract's registration order, the client accounts from :func:`client_address`.
    ``head_height`` is the ledger's last block, where the chain must end too (a chain
    that anchors more blocks than the ledger holds means a truncated ledger).
    """

    name = "anchored on chain"

    def __init__(self, anchor: AnchorContract, *, head_height: int) -> None:
        self.anchor = anchor
        self.head_height = head_height
        self.accounts: AccountMap | None = None

    def check_block(self, context: BlockContext) -> None:
        state = context.state_after
        if self.accounts is None:
            chain_quorum = self.anchor.quorum()
            if chain_quorum != state.quorum:
                raise ChainMismatch(f"contract quorum {chain_quorum}, ledger quorum "
                                    f"{state.quorum}")
            self.accounts = AccountMap.for_federation(
                state.federation_id, validator_ids=list(state.validators()),
                client_ids=list(state.clients()), validator_accounts=self.anchor.validators())
        header = context.block.header
        anchored = self.anchor.header(header.hash())
        check_header(anchored, header)
        assert anchored is not None
        if not anchored.finalised:
            raise ChainMismatch(f"block {header.height} header {header.hash().hex()} is not "
                                f"final on chain: {anchored.approvals} approvals, quorum "
                                f"{self.anchor.quorum()}")
        if header.height == self.head_height:
            anchored_count = self.anchor.anchored()
            if anchored_count != self.head_height + 1:
                raise ChainMismatch(f"the chain anchors {anchored_count} blocks, the ledger "
                                    f"holds {self.head_height + 1}")
            compare_state(self.anchor, state, self.accounts)


def _main() -> None:
    """``python -m bfl_private.ledger.chain --compile``: regenerate the artefact."""
    import sys

    if sys.argv[1:] != ["--compile"]:
        sys.exit("usage: python -m bfl_private.ledger.chain --compile")
    CONTRACT_ARTIFACT.write_text(json.dumps(compile_contract(), indent=1, sort_keys=True) + "\n",
                                 encoding="utf-8")
    print(f"wrote {CONTRACT_ARTIFACT}")


if __name__ == "__main__":
    _main()
