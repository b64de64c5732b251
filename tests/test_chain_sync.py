"""A real federation ledger anchored on an in-process EVM: sync, verify, refusals.

Ledgers come from the application (``run_command``); the chain is eth-tester on py-evm.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from bfl_private.ledger.chain import (
    AccountMap,
    AnchorContract,
    ChainHook,
    Settlement,
    epsilon_fixed,
    in_process,
    settlement_of,
)
from bfl_private.ledger.entries import ROUND_CLOSE, Entry
from bfl_private.ledger.errors import (
    ChainMismatch,
    ChainRevert,
    ChainUnavailable,
    ContractViolation,
    MalformedRecord,
    VerificationError,
)
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.store import Ledger
from bfl_private.ledger.verify import run_checks
from web3 import Web3

from bfl_private.chain_sync import CHAIN_FILE, read_chain_file, sync, validator_keys
from bfl_private.coordinator import COORDINATOR
from bfl_private.keyring import Keyring, KeyringError
from bfl_private.parties import CHAIN_KEY_FILE, IDENTITY_FILE, party_folder

pytest_plugins = ("chain_fixtures",)

def _verify_on_chain(directory: Path, w3, address: str):  # type: ignore[no-untyped-def]
    with Ledger.open(directory) as ledger:
        head = ledger.height
    assert head is not None
    return run_checks(directory, hooks=[ChainHook(AnchorContract.at(w3, address),
                                                  head_height=head)])


def test_anchored_rounds_verify_and_balances_match(federation: Path) -> None:
    w3 = in_process()
    report = sync(federation, w3=w3)
    with Ledger.open(federation) as ledger:
        state, height = ledger.state, ledger.height
    assert report.deployed and report.anchored == list(range(height + 1))
    assert report.settled == [1, 2, 3]
    anchor = AnchorContract.at(w3, report.contract)
    record = read_chain_file(federation)
    assert record is not None and record["contract"] == anchor.address
    accounts = AccountMap(record["validators"], record["clients"])
    on_chain = {name: anchor.balance_of(address)
                for name, address in {**accounts.clients, **accounts.validators}.items()}
    assert on_chain == state.balances()
    # the fixture's rounds really exercise rewards, penalties and validator rewards
    rounds = state.rounds()
    assert sum(r["dropouts"] + r["rejected"] for r in rounds) > 0
    assert all(on_chain[v] > 0 for v in accounts.validators)
    for name, client in state.clients().items():
        assert anchor.epsilon_spent(accounts.clients[name]) == \
            epsilon_fixed(client["epsilon_spent"])
    verified = _verify_on_chain(federation, w3, anchor.address)
    assert verified.ok, verified.render()
    assert verified.checks[-1].name == "anchored on chain"


class Crash(Exception):
    """Stands for the process dying between two transactions."""


def _crash_at(monkeypatch: pytest.MonkeyPatch, method: str, call: int) -> None:
    """Make the ``call``-th call of ``AnchorContract.<method>`` in this test crash."""
    original = getattr(AnchorContract, method)
    count = 0

    def crashing(self: AnchorContract, *args: object, **kwargs: object) -> None:
        nonlocal count
        count += 1
        if count == call:
            raise Crash(f"{method} call {call}")
        original(self, *args, **kwargs)

    monkeypatch.setattr(AnchorContract, method, crashing)


@pytest.mark.parametrize(("method", "call", "anchored", "settled"), [
    ("approve_header", 6, [1, 2, 3], [1, 2, 3]),  # block 0 final (4 cosigners), 1 has one
    ("settle_round", 2, [3], [2, 3]),             # block 2 final, round 2 not settled
    ("propose_header", 4, [3], [3]),              # blocks 0-2 done, block 3 not proposed
])
def test_sync_resumes_a_crashed_run(federation: Path, monkeypatch: pytest.MonkeyPatch,
                                    method: str, call: int, anchored: list[int],
                                    settled: list[int]) -> None:
    w3 = in_process()
    _crash_at(monkeypatch, method, call)
    with pytest.raises(Crash):
        sync(federation, w3=w3)
    monkeypatch.undo()
    resumed = sync(federation, w3=w3)
    assert not resumed.deployed
    assert (resumed.anchored, resumed.settled) == (anchored, settled)
    assert _verify_on_chain(federation, w3, resumed.contract).ok
    assert sync(federation, w3=w3).anchored == []  # nothing left to do


def test_header_below_quorum_is_not_final_and_verify_says_so(
        federation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w3 = in_process()
    _crash_at(monkeypatch, "approve_header", 4 + 3)  # block 1: 2 approvals, quorum 3
    with pytest.raises(Crash):
        sync(federation, w3=w3)
    record = read_chain_file(federation)
    assert record is not None
    report = _verify_on_chain(federation, w3, record["contract"])
    assert not report.ok
    failure = report.failure
    assert failure is not None and failure.name == "anchored on chain"
    assert failure.block == 1 and failure.error_type == "ChainMismatch"
    assert "not final on chain: 2 approvals, quorum 3" in failure.detail


def test_unanchored_block_is_named(federation: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    w3 = in_process()
    _crash_at(monkeypatch, "propose_header", 3)
    with pytest.raises(Crash):
        sync(federation, w3=w3)
    record = read_chain_file(federation)
    assert record is not None
    failure = _verify_on_chain(federation, w3, record["contract"]).failure
    assert failure is not None and failure.block == 2
    assert "block 2 header" in failure.detail and "is not anchored on chain" in failure.detail


def test_tokens_moved_on_chain_are_named(synced: tuple[Path, Web3]) -> None:
    directory, w3 = synced
    record = read_chain_file(directory)
    assert record is not None
    giver = validator_keys(directory, ["validator-0"], create=False)["validator-0"]
    taker = record["validators"]["validator-1"]
    anchor = AnchorContract.at(w3, record["contract"])
    transfer = anchor.contract.functions.transfer(taker, 5).build_transaction(
        {"from": giver.address, "nonce": w3.eth.get_transaction_count(giver.address)})
    w3.eth.wait_for_transaction_receipt(
        w3.eth.send_raw_transaction(giver.sign_transaction(transfer).raw_transaction))
    failure = _verify_on_chain(directory, w3, anchor.address).failure
    assert failure is not None and failure.error_type == "ChainMismatch"
    assert "validator 'validator-0' balance" in failure.detail
    assert "validator 'validator-1' balance" in failure.detail


def test_epsilon_past_budget_reverts_on_chain_as_the_ledger_refuses(
        synced: tuple[Path, Web3]) -> None:
    """The same over-budget round_close: the embedded contract refuses it, the chain reverts."""
    directory, w3 = synced
    with Ledger.open(directory) as ledger:
        last = ledger.block(ledger.height)  # type: ignore[arg-type]
        before = ledger.block(ledger.height - 1)  # type: ignore[operator]
        entries = ledger.entries(last.first_entry, last.header.size)
        state_before = _state_at(ledger, before.height)
        record = read_chain_file(directory)
    assert record is not None
    close = next(e for e in entries if e.type == ROUND_CLOSE)
    client = min(close.payload["cumulative_epsilon"])
    budget = state_before.clients()[client]["epsilon_budget"]
    payload = {**close.payload,
               "cumulative_epsilon": {**close.payload["cumulative_epsilon"], client: budget + 0.25}}
    forged = Entry.create(SigningIdentity.from_private_bytes(
        COORDINATOR, Keyring(party_folder(directory, COORDINATOR)).load(IDENTITY_FILE)), ROUND_CLOSE, close.round,
                          payload)
    forged_entries = [forged if e is close else e for e in entries]
    with pytest.raises(ContractViolation, match="exceeds its lifetime budget"):
        state_before.apply_block(forged_entries, first_index=last.first_entry)
    settlement = settlement_of(forged_entries, AccountMap(record["validators"], record["clients"]))
    assert settlement is not None
    anchor = AnchorContract.at(w3, record["contract"])
    # replayed as the next round so only the budget rule can refuse it
    replay = Settlement(round=anchor.last_round() + 1, closed=True, epsilon=settlement.epsilon)
    with pytest.raises(ChainRevert, match="exceeds the lifetime budget"):
        anchor.settle_round(last.header, replay, sender=anchor.owner())
    within = Settlement(round=anchor.last_round() + 1, closed=True,
                        epsilon={a: epsilon_fixed(budget) for a in settlement.epsilon})
    anchor.settle_round(last.header, within, sender=anchor.owner())  # at the budget: allowed


def _state_at(ledger: Ledger, height: int):  # type: ignore[no-untyped-def]
    """The contract state after block ``height``, replayed from genesis."""
    from bfl_private.ledger.contracts import LedgerState

    state = LedgerState.empty()
    for block in ledger.blocks():
        if block.height > height:
            break
        state = state.apply_block(ledger.entries(block.first_entry, block.header.size),
                                  first_index=block.first_entry)
    return state


def test_chain_file_for_another_chain_is_refused(synced: tuple[Path, Web3]) -> None:
    directory, w3 = synced
    assert sync(directory, w3=w3).anchored == []
    path = directory / CHAIN_FILE
    record = json.loads(path.read_text())
    path.write_text(json.dumps({**record, "chain_id": 1}))
    with pytest.raises(ChainMismatch, match="names chain 1"):
        sync(directory, w3=in_process())
    path.write_text("{")
    with pytest.raises(MalformedRecord, match=CHAIN_FILE):
        sync(directory, w3=in_process())
    path.write_text(json.dumps({**record, "version": 1}))  # validators were node accounts then
    with pytest.raises(MalformedRecord, match="not a version-2 chain record"):
        sync(directory, w3=in_process())
    path.write_text(json.dumps({"version": 2, "contract": "0x00"}))
    with pytest.raises(MalformedRecord, match="missing chain_id"):
        sync(directory, w3=in_process())
    path.write_text(json.dumps({**record, "clients": {}}))
    with pytest.raises(MalformedRecord, match="no account for"):
        sync(directory, w3=w3)


def test_validators_approve_with_their_own_keys_not_the_nodes(synced: tuple[Path, Web3]) -> None:
    directory, w3 = synced
    record = read_chain_file(directory)
    assert record is not None
    names = sorted(record["validators"])
    keys = validator_keys(directory, names, create=False)
    for name in names:
        assert (party_folder(directory, name) / CHAIN_KEY_FILE).stat().st_mode & 0o777 == 0o600
        assert keys[name].address == record["validators"][name]
    anchor = AnchorContract.at(w3, record["contract"])
    assert anchor.validators() == [keys[n].address for n in names]
    assert not set(anchor.validators()) & set(w3.eth.accounts)  # the node holds none of them
    senders = {w3.eth.get_transaction(log["transactionHash"])["from"]
               for log in anchor.contract.events.HeaderApproved().get_logs(from_block=0)}
    assert senders == {keys[n].address for n in names}


def test_a_validator_key_that_is_not_the_registered_account_is_named(synced: tuple[Path, Web3]) -> None:
    directory, w3 = synced
    Keyring(party_folder(directory, "validator-1")).store(CHAIN_KEY_FILE, bytes(range(1, 33)))
    with pytest.raises(ChainMismatch, match="validator-1's key in its party folder signs as 0x"):
        sync(directory, w3=w3)


def test_a_validator_key_file_that_is_not_a_key_is_named(synced: tuple[Path, Web3]) -> None:
    directory, w3 = synced
    Keyring(party_folder(directory, "validator-2")).store(CHAIN_KEY_FILE, b"not a key")
    with pytest.raises(KeyringError, match=r"validator-2's chain key chain\.secp256k1 is not a secp256k1 private key"):
        sync(directory, w3=w3)
    (party_folder(directory, "validator-2") / CHAIN_KEY_FILE).unlink()
    with pytest.raises(KeyringError, match="'chain.secp256k1' not found in .*validator-2"):
        sync(directory, w3=w3)  # an anchored federation never silently mints a new validator key


def test_a_chain_lost_mid_audit_fails_no_check(synced: tuple[Path, Web3]) -> None:
    """The node going away while check 12 reads it is ChainUnavailable raised through the
    verifier, not a failed check: an unreachable chain says nothing about the ledger."""
    directory, w3 = synced
    record = read_chain_file(directory)
    assert record is not None
    anchor = AnchorContract.at(w3, record["contract"])
    with socket.socket() as s:  # then the node "goes": reads go to a closed loopback port
        s.bind(("127.0.0.1", 0))
        gone = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{s.getsockname()[1]}"))
    anchor.contract = gone.eth.contract(address=anchor.address, abi=anchor.contract.abi)
    with Ledger.open(directory) as ledger:
        head = ledger.height
    assert head is not None
    with pytest.raises(ChainUnavailable, match=f"reading quorum from {anchor.address}") as raised:
        run_checks(directory, hooks=[ChainHook(anchor, head_height=head)])
    assert not isinstance(raised.value, VerificationError)
