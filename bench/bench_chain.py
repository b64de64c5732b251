"""EVM anchor: gas per round against the number of clients N and the model size D, and
wall time per anchored round, on an in-process EVM (eth-tester + py-evm).

Gas is the EVM's own deterministic count, so the figures are the same on anvil, Besu or
mainnet for the same bytecode; only the times depend on the backend.

* gas vs N: a synthetic federation of N clients and 4 validators (quorum 3) posts one
  round: ``propose_header`` + 4 ``approve_header`` + ``settle_round`` with all N clients
  surviving and spending ε. Baseline: the same round at the smallest N; target linear or
  better in N (the marginal gas per client is reported).
* gas vs D: real ledgers from ``run_command`` (3 clients, 1 round, plain protocol) with
  models of different sizes, anchored by ``chain_sync.sync``; the round's gas must not
  move with D (only hashes and integers go on chain). Baseline: the smallest model.
* time per anchored round: wall time of those transactions in-process (and on the node
  at ``$BFL_CHAIN_URL`` when set, e.g. anvil), against the embedded contract's replay of
  the same block (``LedgerState.apply_block``) timed in the same process.
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

from bfl_private.ledger.blocks import GENESIS_PREV, BlockHeader
from bfl_private.ledger.chain import (
    AccountMap,
    AnchorContract,
    Settlement,
    client_address,
    connect,
    epsilon_fixed,
    fund,
    in_process,
    settlement_of,
)
from bfl_private.ledger.contracts import LedgerState
from bfl_private.ledger.store import Ledger
from eth_account import Account
from eth_account.signers.local import LocalAccount
from web3 import Web3

from bfl_private.chain_sync import sync

REWARDS = {"reward_per_round": 1000, "penalty_invalid": 100, "penalty_dropout": 10,
           "validator_reward": 10}
CHAIN_URL_ENV = "BFL_CHAIN_URL"
ROUND_CALLS = ("propose_header", "approve_header", "settle_round")


def _validator_keys(w3: Web3, owner: str, count: int) -> list[LocalAccount]:
    """Validators as the product runs them: own keys signing raw transactions, gas from the owner."""
    keys = [Account.create() for _ in range(count)]
    for key in keys:
        fund(w3, sender=owner, account=key.address, wei=10**18)
    return keys


def _synthetic_round(clients: int) -> tuple[int, int, float]:
    """Gas of the first and of the second anchored round (blocks 1 and 2) with ``clients``
    survivors, and the first round's seconds. The first round writes fresh storage slots
    (epsilon and balance of every client: 22.1k gas each), later rounds overwrite them."""
    w3 = in_process()
    owner = w3.eth.accounts[0]
    validators = _validator_keys(w3, owner, 4)
    anchor = AnchorContract.deploy(w3, deployer=owner, quorum=3, validators=[v.address for v in validators],
                                   rewards=REWARDS)
    addresses = [client_address("bench", f"c{i}") for i in range(clients)]
    anchor.register_clients({a: epsilon_fixed(3.0) for a in addresses}, sender=owner)
    headers = [BlockHeader("bfl-private/bench", 0, 1, bytes(32), GENESIS_PREV, bytes(32), 0)]
    anchor.propose_header(headers[0], sender=owner)
    for v in validators:
        anchor.approve_header(headers[0], validator=v)
    gas, seconds = [], 0.0
    for number in (1, 2):
        header = BlockHeader("bfl-private/bench", number, 1 + number * (clients + 5),
                             bytes([number]) * 32, headers[-1].hash(), bytes([2]) * 32, number)
        before = len(anchor.gas_used)
        start = time.perf_counter()
        anchor.propose_header(header, sender=owner)
        for v in validators:
            anchor.approve_header(header, validator=v)
        anchor.settle_round(header, Settlement(
            round=number, closed=True, epsilon={a: epsilon_fixed(0.5 * number) for a in addresses},
            survivors=[(a, 100) for a in addresses],
            attestations=[(v.address, True, 900_000) for v in validators]), sender=owner)
        seconds = seconds or time.perf_counter() - start
        gas.append(sum(g for _, g in anchor.gas_used[before:]))
        headers.append(header)
    return gas[0], gas[1], seconds


def _real_round(directory: Path, model: str, dataset: str) -> dict:
    """A one-round real ledger anchored by sync: model size, round gas, times."""
    from bfl_private.artifacts import get_model
    from bfl_private.runner import RoundOptions, run_command

    run_command(directory, RoundOptions(epsilon=1.0, clients=3, rounds=1, seed=1,
                                        protocol="plain", model=model, dataset=dataset),
                quiet=True)
    report = sync(directory, w3=in_process())
    round_gas = [g for name, g in report.gas if name in ROUND_CALLS]
    with Ledger.open(directory) as ledger:
        genesis_calls = 1 + len(ledger.block(0).signatures)  # block 0: propose + approvals
        dimension = int(get_model(ledger.blobs, ledger.state.model_cid).size)
        block = ledger.block(1)
        entries = ledger.entries(block.first_entry, block.header.size)
        before = LedgerState.empty().apply_block(ledger.entries(0, 1), first_index=0)
        replay = float("inf")
        for _ in range(20):  # the fastest of 20: the replay is short and the machine shared
            start = time.perf_counter()
            before.apply_block(entries, first_index=block.first_entry)
            replay = min(replay, time.perf_counter() - start)
    return {"dimension": dimension, "gas": sum(round_gas[genesis_calls:]), "replay_s": replay}


def _anchored_round_seconds(directory: Path, w3: Web3) -> float:
    """Wall time of anchoring block 1 and settling round 1 of ``directory`` on ``w3``."""
    with Ledger.open(directory) as ledger:
        state, block0, block1 = ledger.state, ledger.block(0), ledger.block(1)
        entries = ledger.entries(block1.first_entry, block1.header.size)
    owner = w3.eth.accounts[0]
    accounts = _validator_keys(w3, owner, len(state.validators()))
    mapping = AccountMap.for_federation(state.federation_id, validator_ids=sorted(state.validators()),
                                        client_ids=list(state.clients()),
                                        validator_accounts=[a.address for a in accounts])
    anchor = AnchorContract.deploy(w3, deployer=owner, quorum=state.quorum,
                                   validators=[mapping.validators[v] for v in sorted(mapping.validators)],
                                   rewards=state.as_dict()["rewards"])
    anchor.register_clients({a: epsilon_fixed(3.0) for a in mapping.clients.values()}, sender=owner)
    anchor.propose_header(block0.header, sender=owner)
    for account in accounts:
        anchor.approve_header(block0.header, validator=account)
    settlement = settlement_of(entries, mapping)
    assert settlement is not None
    start = time.perf_counter()
    anchor.propose_header(block1.header, sender=owner)
    for account in accounts:
        anchor.approve_header(block1.header, validator=account)
    anchor.settle_round(block1.header, settlement, sender=owner)
    return time.perf_counter() - start


def run(*, quick: bool) -> list[dict]:
    rows: list[dict] = []
    sizes = (4, 16, 64) if quick else (4, 16, 64, 256)
    measured = {n: _synthetic_round(n) for n in sizes}
    base_n = sizes[0]
    for label, which in (("first round", 0), ("later round", 1)):
        base_gas = measured[base_n][which]
        for n in sizes:
            gas, seconds = measured[n][which], measured[n][2]
            marginal = (gas - base_gas) / (n - base_n) if n != base_n else 0.0
            note = f"{marginal:,.0f} gas per extra client"
            rows.append({"name": f"gas per round, N={n} clients ({label})", "gas": gas,
                         "baseline": f"N={base_n}", "baseline_gas": base_gas,
                         "ratio": gas / base_gas,
                         "note": note + (f"; {seconds:.2f} s in-process" if not which else "")})
    models = (("logreg", "breast_cancer"), ("mlp", "digits"))
    with tempfile.TemporaryDirectory() as tmp:
        real = {m: _real_round(Path(tmp) / m, m, d) for m, d in models}
        small = real[models[0][0]]
        for model, dataset in models:
            r = real[model]
            rows.append({"name": f"gas per round, D={r['dimension']:,} ({model}, {dataset})",
                         "gas": r["gas"], "baseline": f"D={small['dimension']:,}",
                         "baseline_gas": small["gas"], "ratio": r["gas"] / small["gas"],
                         "note": "real ledger, 3 clients, 4 validators"})
        directory = Path(tmp) / models[0][0]
        nodes = [("in-process py-evm", in_process())]
        if os.environ.get(CHAIN_URL_ENV):
            nodes.append(("anvil at " + os.environ[CHAIN_URL_ENV], connect(os.environ[CHAIN_URL_ENV])))
        replay = small["replay_s"]
        for label, w3 in nodes:
            seconds = _anchored_round_seconds(directory, w3)
            rows.append({"name": f"time per anchored round ({label})", "seconds": seconds,
                         "baseline": "embedded contract replay of the same block",
                         "baseline_seconds": replay, "ratio": seconds / replay,
                         "note": "propose + 4 approvals + settle, each a mined transaction"})
    return rows


def _markdown(rows: list[dict]) -> str:
    lines = ["| measure | figure | baseline | ratio | note |", "|---|---|---|---|---|"]
    for r in rows:
        if "gas" in r:
            lines.append(f"| {r['name']} | {r['gas']:,} gas | {r['baseline']}: "
                         f"{r['baseline_gas']:,} gas | {r['ratio']:.2f}x | {r['note']} |")
        else:
            lines.append(f"| {r['name']} | {r['seconds'] * 1e3:.1f} ms | {r['baseline']}: "
                         f"{r['baseline_seconds'] * 1e3:.2f} ms | {r['ratio']:.0f}x | {r['note']} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(_markdown(run(quick="--quick" in sys.argv)))
