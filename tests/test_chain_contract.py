"""The Vyper anchor contract on an in-process EVM (eth-tester + py-evm): artefact, fixed
point, anchor finality, budget and reward rules, and every refusal as a named revert."""
from __future__ import annotations

import json
import shutil
from fractions import Fraction
from pathlib import Path

import pytest
import vyper
from bfl_private.ledger.blocks import GENESIS_PREV, BlockHeader
from bfl_private.ledger.chain import (
    CONTRACT_ARTIFACT,
    CONTRACT_SOURCE,
    AnchorContract,
    Settlement,
    client_address,
    compile_contract,
    connect,
    epsilon_fixed,
    in_process,
    load_artifact,
)
from bfl_private.ledger.contracts import PPM, _median_ppm
from bfl_private.ledger.errors import ChainRevert, ChainUnavailable, MalformedRecord
from hypothesis import given, settings
from hypothesis import strategies as st

REWARDS = {"reward_per_round": 1000, "penalty_invalid": 100, "penalty_dropout": 10,
           "validator_reward": 10}
BUDGET = 3.0


class Chain:
    """A fresh chain with the contract deployed: 4 validators, quorum 3, 3 clients."""

    def __init__(self) -> None:
        self.w3 = in_process()
        accounts = self.w3.eth.accounts
        self.owner, self.validators = accounts[0], accounts[1:5]
        self.anchor = AnchorContract.deploy(self.w3, deployer=self.owner, quorum=3,
                                            validators=self.validators, rewards=REWARDS)
        self.clients = [client_address("fed", f"c{i}") for i in range(3)]
        self.anchor.register_clients({c: epsilon_fixed(BUDGET) for c in self.clients},
                                     sender=self.owner)
        self.headers: list[BlockHeader] = []
        self.tester = self.w3.provider.ethereum_tester  # type: ignore[attr-defined]
        self.snapshot = self.tester.take_snapshot()

    def reset(self) -> Chain:
        """Back to just after deployment (hypothesis examples share one chain)."""
        self.tester.revert_to_snapshot(self.snapshot)
        self.headers = []
        return self

    def header(self, *, final: bool = True) -> BlockHeader:
        """Anchor the next header (size grows by one), approved by a quorum if ``final``."""
        height = len(self.headers)
        header = BlockHeader("bfl-private/fed", height, height + 1, bytes([height]) * 32,
                             self.headers[-1].hash() if self.headers else GENESIS_PREV,
                             bytes([7]) * 32, 1_700_000_000 + height)
        self.anchor.propose_header(header, sender=self.owner)
        if final:
            for v in self.validators[:3]:
                self.anchor.approve_header(header, validator=v)
        self.headers.append(header)
        return header


@pytest.fixture
def chain() -> Chain:
    return Chain()


def test_artefact_is_the_compiled_source() -> None:
    artifact = load_artifact()
    fresh = compile_contract()
    assert artifact == fresh
    assert artifact["compiler"] == f"vyper {vyper.__version__}" == "vyper 0.4.3"


def test_stale_artefact_is_refused(tmp_path: Path) -> None:
    source = Path(shutil.copy(CONTRACT_SOURCE, tmp_path / CONTRACT_SOURCE.name))
    source.write_text(source.read_text() + "\n# edited\n")
    with pytest.raises(MalformedRecord, match="another version"):
        load_artifact(CONTRACT_ARTIFACT, source=source)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(MalformedRecord, match="broken.json"):
        load_artifact(broken)


@given(st.floats(min_value=0, max_value=1e6, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_epsilon_fixed_never_under_reports(value: float) -> None:
    fixed = epsilon_fixed(value)
    exact = Fraction(repr(value)) * 10**9  # the decimal the canonical JSON writes
    assert exact <= fixed < exact + 1
    assert Fraction(fixed, 10**9) >= Fraction(repr(value))


@given(st.floats(min_value=0, max_value=100, allow_nan=False),
       st.floats(min_value=0, max_value=100, allow_nan=False))
@settings(max_examples=200, deadline=None)
def test_epsilon_fixed_is_monotone(a: float, b: float) -> None:
    low, high = sorted((a, b))
    assert epsilon_fixed(low) <= epsilon_fixed(high)


def test_epsilon_fixed_values_and_refusals() -> None:
    assert epsilon_fixed(0.1) == 100_000_000  # the decimal, not the binary float above it
    assert epsilon_fixed(3) == 3_000_000_000
    assert epsilon_fixed(1e-10) == 1
    assert epsilon_fixed(0.9999998737966422) == 999_999_874
    for bad in (float("nan"), float("inf"), -0.5, True, "1.0"):
        with pytest.raises(MalformedRecord):
            epsilon_fixed(bad)  # type: ignore[arg-type]


def test_header_is_final_only_at_quorum(chain: Chain) -> None:
    header = chain.header(final=False)
    for count, validator in enumerate(chain.validators[:2], start=1):
        chain.anchor.approve_header(header, validator=validator)
        record = chain.anchor.header(header.hash())
        assert record is not None and record.approvals == count and not record.finalised
    chain.anchor.approve_header(header, validator=chain.validators[2])
    record = chain.anchor.header(header.hash())
    assert record is not None and record.finalised and record.log_size == 1
    assert record.merkle_root == header.root and record.state_root == header.state_root


def test_anchor_refusals(chain: Chain) -> None:
    header = chain.header(final=False)
    with pytest.raises(ChainRevert, match="not a validator"):
        chain.anchor.approve_header(header, validator=chain.owner)
    chain.anchor.approve_header(header, validator=chain.validators[0])
    with pytest.raises(ChainRevert, match="already approved"):
        chain.anchor.approve_header(header, validator=chain.validators[0])
    with pytest.raises(ChainRevert, match="previous header is not final"):
        chain.header()
    with pytest.raises(ChainRevert, match="header already proposed"):
        chain.anchor.propose_header(header, sender=chain.owner)
    with pytest.raises(ChainRevert, match="only the owner proposes"):
        chain.anchor.propose_header(header, sender=chain.validators[0])
    with pytest.raises(ChainRevert, match="registry sealed"):
        chain.anchor.register_clients({client_address("fed", "late"): 1}, sender=chain.owner)


def test_gapped_or_forked_header_is_refused(chain: Chain) -> None:
    first = chain.header()
    skipped = BlockHeader("bfl-private/fed", 2, 5, bytes(32), first.hash(), bytes(32), 0)
    with pytest.raises(ChainRevert, match="height is not the next one"):
        chain.anchor.propose_header(skipped, sender=chain.owner)
    forked = BlockHeader("bfl-private/fed", 1, 5, bytes(32), bytes([9]) * 32, bytes(32), 0)
    with pytest.raises(ChainRevert, match="previous hash is not the last anchor"):
        chain.anchor.propose_header(forked, sender=chain.owner)


def test_deploy_refuses_a_quorum_below_two_thirds() -> None:
    w3 = in_process()
    with pytest.raises(ChainRevert, match="quorum outside"):
        AnchorContract.deploy(w3, deployer=w3.eth.accounts[0], quorum=2,
                              validators=w3.eth.accounts[1:5], rewards=REWARDS)


def test_contract_at_another_address_is_refused(chain: Chain) -> None:
    with pytest.raises(ChainUnavailable, match="no bfl_anchor contract"):
        AnchorContract.at(chain.w3, chain.owner)
    with pytest.raises(ChainUnavailable, match="cannot read code"):
        AnchorContract.at(chain.w3, "0x00")


def test_no_node_is_named() -> None:
    with pytest.raises(ChainUnavailable, match="no Ethereum JSON-RPC node answers"):
        connect("http://127.0.0.1:9", timeout=2)


def test_budget_rules(chain: Chain) -> None:
    header = chain.header()
    c0, c1, _ = chain.clients
    with pytest.raises(ChainRevert, match="exceeds the lifetime budget"):
        chain.anchor.settle_round(header, Settlement(
            round=1, closed=False, epsilon={c0: epsilon_fixed(BUDGET) + 1}), sender=chain.owner)
    with pytest.raises(ChainRevert, match="unregistered client"):
        chain.anchor.settle_round(header, Settlement(
            round=1, closed=False, epsilon={chain.owner: 1}), sender=chain.owner)
    chain.anchor.settle_round(header, Settlement(
        round=1, closed=False, epsilon={c0: epsilon_fixed(BUDGET), c1: epsilon_fixed(0.5)}),
        sender=chain.owner)
    assert chain.anchor.epsilon_spent(c0) == 3_000_000_000
    assert chain.anchor.epsilon_spent(c1) == 500_000_000
    events = chain.anchor.contract.events
    spent = [(e.args.client, e.args.round, e.args.cumulative)
             for e in events.EpsilonSpent().get_logs(from_block=0)]
    assert sorted(spent) == sorted([(c0, 1, 3_000_000_000), (c1, 1, 500_000_000)])
    finalised = events.HeaderFinalised().get_logs(from_block=0)
    assert [(e.args.header_hash, e.args.height) for e in finalised] == [(header.hash(), 0)]
    (settled,) = events.RoundSettled().get_logs(from_block=0)
    assert (settled.args.round, settled.args.closed, settled.args.minted) == (1, False, 0)
    with pytest.raises(ChainRevert, match="round is not the next one"):  # replay
        chain.anchor.settle_round(header, Settlement(round=1, closed=False), sender=chain.owner)
    second = chain.header()
    with pytest.raises(ChainRevert, match="would decrease"):
        chain.anchor.settle_round(second, Settlement(
            round=2, closed=False, epsilon={c1: epsilon_fixed(0.4)}), sender=chain.owner)


def test_settlement_needs_a_final_header_and_the_owner(chain: Chain) -> None:
    header = chain.header(final=False)
    with pytest.raises(ChainRevert, match="header is not final"):
        chain.anchor.settle_round(header, Settlement(round=1, closed=False), sender=chain.owner)
    with pytest.raises(ChainRevert, match="only the owner settles"):
        chain.anchor.settle_round(header, Settlement(round=1, closed=False),
                                  sender=chain.validators[0])


def test_aborted_round_mints_nothing(chain: Chain) -> None:
    header = chain.header()
    with pytest.raises(ChainRevert, match="mints and penalises nothing"):
        chain.anchor.settle_round(header, Settlement(
            round=1, closed=False, survivors=[(chain.clients[0], 1)]), sender=chain.owner)


def test_attestations_by_strangers_or_twice_are_refused(chain: Chain) -> None:
    header = chain.header()
    v = chain.validators
    with pytest.raises(ChainRevert, match="non-validator"):
        chain.anchor.settle_round(header, Settlement(
            round=1, closed=True, attestations=[(chain.owner, True, 1)]), sender=chain.owner)
    with pytest.raises(ChainRevert, match="attested twice"):
        chain.anchor.settle_round(header, Settlement(
            round=1, closed=True, attestations=[(v[0], True, 1), (v[1], True, 1),
                                                (v[0], True, 1)]), sender=chain.owner)


_SHARED: list[Chain] = []


def _shared_chain() -> Chain:
    if not _SHARED:
        _SHARED.append(Chain())
    return _SHARED[0].reset()


@given(weights=st.lists(st.integers(1, 10_000), min_size=1, max_size=3),
       verdicts=st.lists(st.tuples(st.booleans(), st.integers(0, PPM)), min_size=0, max_size=4),
       penalised=st.lists(st.integers(0, 2), max_size=3, unique=True))
@settings(max_examples=8, deadline=None)
def test_rewards_follow_the_embedded_rule(weights: list[int], verdicts: list[tuple[bool, int]],
                                          penalised: list[int]) -> None:
    """Two rounds: the first mints, the second penalises (never below 0) and mints again;
    every balance equals the integer rule of ledger/contracts.py."""
    chain = _shared_chain()
    survivors = list(zip(chain.clients, weights))
    attestations = [(chain.validators[i], ok, q) for i, (ok, q) in enumerate(verdicts)]
    expected = dict.fromkeys([*chain.clients, *chain.validators], 0)

    def mint() -> None:
        accepting = [q for _, ok, q in attestations if ok]
        if len(accepting) >= 3:
            quality, total = _median_ppm(accepting), sum(weights)
            for client, w in survivors:
                expected[client] += REWARDS["reward_per_round"] * w * quality // (total * PPM)
        for validator, _, _ in attestations:
            expected[validator] += REWARDS["validator_reward"]

    chain.anchor.settle_round(chain.header(), Settlement(
        round=1, closed=True, survivors=survivors, attestations=attestations), sender=chain.owner)
    mint()
    rejected = [chain.clients[i] for i in penalised[:1]]
    dropouts = [chain.clients[i] for i in penalised[1:]]
    rest = [(c, w) for c, w in survivors if c not in rejected + dropouts]
    for client in rejected:
        expected[client] = max(0, expected[client] - REWARDS["penalty_invalid"])
    for client in dropouts:
        expected[client] = max(0, expected[client] - REWARDS["penalty_dropout"])
    survivors, weights = rest, [w for _, w in rest]
    chain.anchor.settle_round(chain.header(), Settlement(
        round=2, closed=True, survivors=survivors, rejected=rejected, dropouts=dropouts,
        attestations=attestations), sender=chain.owner)
    mint()
    assert {a: chain.anchor.balance_of(a) for a in expected} == expected
    assert chain.anchor.contract.functions.totalSupply().call() == sum(expected.values())


def test_abi_names_every_event() -> None:
    events = {e["name"] for e in json.loads(CONTRACT_ARTIFACT.read_text())["abi"]
              if e["type"] == "event"}
    assert events == {"Transfer", "Approval", "ValidatorRegistered", "ClientRegistered",
                      "HeaderProposed", "HeaderApproved", "HeaderFinalised", "EpsilonSpent",
                      "RoundSettled"}
