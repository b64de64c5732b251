"""The contracts: registry, round rules, privacy budgets, model chain and rewards."""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_fixtures import REWARDS, Federation

from bfl_private.ledger.contracts import LedgerState, min_quorum
from bfl_private.ledger.entries import (
    ATTESTATION,
    GENESIS,
    ROUND_CLOSE,
    ROUND_OPEN,
    SUBMISSION,
    Entry,
)
from bfl_private.ledger.errors import ContractViolation, SignatureError
from bfl_private.ledger.store import Ledger


@pytest.fixture(scope="module")
def federation() -> Federation:
    return Federation()


@pytest.fixture
def ledger(tmp_path: Path, federation: Federation) -> Ledger:
    with federation.start(tmp_path / "ledger") as ledger:
        yield ledger


def replace(entries: list[Entry], index: int, identity, **changes: object) -> list[Entry]:
    """Entries with ``entries[index]`` re-signed by ``identity`` with payload changes."""
    old = entries[index]
    new = Entry.create(identity, old.type, changes.pop("round", old.round),
                       {**old.payload, **changes})
    return [*entries[:index], new, *entries[index + 1:]]


def test_min_quorum_is_2f_plus_1_of_3f_plus_1() -> None:
    for f in range(5):
        assert min_quorum(3 * f + 1) == 2 * f + 1
    assert [min_quorum(n) for n in (1, 2, 3)] == [1, 2, 3]


def test_block_zero_must_be_genesis(tmp_path: Path, federation: Federation) -> None:
    with Ledger.create(tmp_path / "l") as ledger:
        open_entry = Entry.create(federation.coordinator, ROUND_OPEN, 1, {
            "participants": ["client-0"], "protocol": "plain", "protocol_params": {},
            "base_model_cid": None, "privacy_plan": {}})
        with pytest.raises(ContractViolation, match="exactly one genesis"):
            ledger.propose([open_entry], time=1)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"quorum": 2}, "outside \\[3, 4\\]"),
        ({"quorum": 5}, "outside \\[3, 4\\]"),
        ({"validators": "dup-id"}, "unique across roles"),
        ({"validators": "dup-key"}, "already registered"),
        ({"validators": "bad-vkey"}, "bad verifier key"),
    ],
)
def test_genesis_registry_rules(tmp_path: Path, federation: Federation, change: dict,
                                message: str) -> None:
    payload = dict(federation.genesis().payload)
    if change.get("validators") == "dup-id":
        payload["validators"] = [*payload["validators"][:-1],
                                 {**payload["validators"][-1], "id": "client-0"}]
    elif change.get("validators") == "bad-vkey":
        payload["validators"] = [*payload["validators"][:-1],
                                 {**payload["validators"][-1], "vkey": "v+00000000+AAAA"}]
    elif change.get("validators") == "dup-key":  # another id with validator-0's key
        payload["validators"] = [*payload["validators"][:-1],
                                 {**payload["validators"][0], "id": "validator-dup"}]
    else:
        payload.update(change)
    genesis = Entry.create(federation.coordinator, GENESIS, 0, payload)
    with Ledger.create(tmp_path / "l") as ledger, pytest.raises(ContractViolation,
                                                                match=message):
        ledger.propose([genesis], time=1)


def test_genesis_must_be_signed_by_its_coordinator(tmp_path: Path,
                                                   federation: Federation) -> None:
    genesis = Entry.create(federation.validators["validator-0"], GENESIS, 0,
                           federation.genesis().payload)
    with Ledger.create(tmp_path / "l") as ledger, pytest.raises(ContractViolation,
                                                                match="coordinator"):
        ledger.propose([genesis], time=1)


def test_round_rules(ledger: Ledger, federation: Federation) -> None:
    entries = federation.round_entries(ledger, 1)
    coordinator, alice = federation.coordinator, federation.clients["client-0"]
    v0 = federation.validators["validator-0"]
    cases = [
        # (entries, expected message)
        (replace(entries, 0, coordinator, round=2), "next round must be 1"),
        (replace(entries, 0, coordinator, participants=["client-0", "nobody"]),
         "not registered clients"),
        (replace(entries, 0, alice), "coordinator"),
        (replace(entries, 0, coordinator, base_model_cid=entries[1].payload["blob_cid"]),
         None),  # the first round may start from any model (none at genesis)
        (replace(entries, 1, federation.clients["client-1"]), "holds key"),
        (replace(entries, 1, alice, data_weight=10**6), "is not the registered"),
        (replace(entries, 1, alice, data_weight=1), "is not the registered"),
        ([*entries[:2], entries[1], *entries[2:]], "already submitted"),
        (replace(entries, 1, alice, round=2), "round in progress is 1"),
        ([entries[1], *entries], "no round is in progress"),
        (replace(entries, 4, coordinator, survivors=["client-0", "client-1"]), "partition"),
        (replace(entries, 4, coordinator, dropouts=["client-2"]), "overlap"),
        ([*entries[:3], *entries[4:]], "did not submit"),
        (replace(entries, 5, v0, model_cid=entries[1].payload["blob_cid"]),
         "produced"),
        ([*entries, entries[5]], "already attested"),
        (replace(entries, 5, alice, validator="client-0"), "not registered"),
        ([entries[0], *entries[4:]], "did not submit"),
        ([*entries[:4], entries[5], entries[4]], "needs it closed"),
    ]
    for case, message in cases:
        if message is None:
            ledger.propose(case, time=10**10)
            continue
        with pytest.raises(ContractViolation, match=message):
            ledger.propose(case, time=10**10)
    assert ledger.size == 1, "a refused proposal must write nothing"
    federation.commit(ledger, entries)
    # Next round: a replay of round 1's submission is refused.
    entries2 = federation.round_entries(ledger, 2)
    with pytest.raises(ContractViolation, match="entry is for round 1, .* round in progress is 2"):
        ledger.propose([entries2[0], entries[1], *entries2[2:]], time=10**10)
    with pytest.raises(ContractViolation, match="base model .* is not the current model"):
        ledger.propose(replace(entries2, 0, coordinator, base_model_cid=None), time=10**10)


def test_propose_checks_signatures(ledger: Ledger, federation: Federation) -> None:
    entries = federation.round_entries(ledger, 1)
    forged = Entry.create(federation.clients["client-1"], SUBMISSION, 1,
                          entries[1].payload)  # client-1's key, client-0's id
    with pytest.raises(ContractViolation, match="holds key"):
        ledger.propose([entries[0], forged, *entries[2:]], time=10**10)
    bad_sig = Entry(entries[1].type, entries[1].author, 1, entries[1].payload,
                    entries[2].signature, entries[1].to_bytes())
    with pytest.raises(SignatureError, match="entry 2"):
        ledger.propose([entries[0], bad_sig, *entries[2:]], time=10**10)


def test_budget_contract(ledger: Ledger, federation: Federation) -> None:
    federation.run_round(ledger, 1, epsilon_step=1.0)
    assert ledger.state.clients()["client-0"]["epsilon_spent"] == 1.0
    over = federation.round_entries(ledger, 2, epsilon_step=2.5)
    with pytest.raises(ContractViolation, match="exceeds its lifetime budget 3"):
        ledger.propose(over, time=10**10)
    lowered = federation.round_entries(ledger, 2, epsilon_step=1.0)
    close = lowered[4].payload
    lowered = replace(lowered, 4, federation.coordinator,
                      cumulative_epsilon={**close["cumulative_epsilon"], "client-1": 0.5})
    with pytest.raises(ContractViolation, match="client-1.* would decrease from 1 to 0.5"):
        ledger.propose(lowered, time=10**10)
    missing = replace(lowered, 4, federation.coordinator,
                      cumulative_epsilon={"client-0": 2.0})
    with pytest.raises(ContractViolation, match="have no cumulative epsilon"):
        ledger.propose(missing, time=10**10)
    # Exactly at the budget is allowed.
    federation.run_round(ledger, 2, epsilon_step=2.0)
    assert ledger.state.clients()["client-2"]["epsilon_spent"] == 3.0


def test_rewards_model_chain_and_penalties(ledger: Ledger, federation: Federation) -> None:
    """Balances equal the documented integer rule, computed here independently."""
    federation.run_round(ledger, 1)
    q1 = sorted(900_000 + 1000 * i for i in range(4))
    q1 = (q1[1] + q1[2]) // 2  # median of four accepting validators
    w = federation.weights
    total = sum(w.values())
    expected = {c: REWARDS["reward_per_round"] * w[c] * q1 // (total * 1_000_000) for c in w}
    state = ledger.state
    assert {c: state.balances()[c] for c in w} == expected
    assert state.quality_ppm == q1
    model1 = state.model_cid

    # Round 2: client-2 dropped, client-1 rejected; two validators reject -> round rejected.
    federation.run_round(ledger, 2, dropouts=["client-2"], rejected={"client-1": "bad norm"},
                         verdicts=["accept", "accept", "reject", "reject"])
    state = ledger.state
    assert state.model_cid == model1, "a rejected round keeps the old model"
    assert state.rounds()[-1]["outcome"] == "rejected"
    balances = state.balances()
    assert balances["client-0"] == expected["client-0"]
    assert balances["client-1"] == expected["client-1"] - REWARDS["penalty_invalid"]
    assert balances["client-2"] == expected["client-2"] - REWARDS["penalty_dropout"]
    assert all(balances[v] == 2 * REWARDS["validator_reward"] for v in federation.validators)

    # Round 3 aborts: nothing minted, privacy spend recorded.
    spent = state.clients()["client-0"]["epsilon_spent"]
    federation.run_round(ledger, 3, abort=True)
    state = ledger.state
    assert state.balances() == balances
    assert state.clients()["client-0"]["epsilon_spent"] == spent + 0.5
    assert state.rounds()[-1]["outcome"] == "aborted"
    assert state.open_round is None and state.last_round == 3


def test_penalties_floor_at_zero(ledger: Ledger, federation: Federation) -> None:
    federation.run_round(ledger, 1, rejected={"client-0": "malformed"})
    assert ledger.state.balances()["client-0"] == 0


def test_state_is_canonical_and_replayable(tmp_path: Path, federation: Federation) -> None:
    with federation.start(tmp_path / "l") as ledger:
        federation.run_round(ledger, 1)
        state = LedgerState.empty()
        for block in ledger.blocks():
            state = state.apply_block(ledger.entries(block.first_entry, block.header.size),
                                      first_index=block.first_entry)
            assert state.root() == block.header.state_root
        assert state.to_bytes() == ledger.state.to_bytes()
        assert LedgerState.from_bytes(state.to_bytes(), where="s").root() == state.root()


@settings(max_examples=15, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=10**6), min_size=2, max_size=4),
    qualities=st.lists(st.integers(min_value=0, max_value=1_000_000), min_size=4, max_size=4),
    reward=st.integers(min_value=0, max_value=10**9),
)
def test_minted_rewards_never_exceed_the_round_reward(tmp_path_factory, weights: list[int],
                                                      qualities: list[int],
                                                      reward: int) -> None:
    fed = Federation(clients=len(weights))
    fed.weights = dict(zip(fed.clients, weights))
    fed_rewards = dict(REWARDS, reward_per_round=reward)
    genesis_payload = {**fed.genesis().payload, "rewards": fed_rewards}
    with Ledger.create(tmp_path_factory.mktemp("h") / "l") as ledger:
        fed.commit(ledger, [Entry.create(fed.coordinator, GENESIS, 0, genesis_payload)])
        entries = fed.round_entries(ledger, 1)
        n = len(weights)
        attest = [Entry.create(v, ATTESTATION, 1, {**e.payload, "quality_ppm": q})
                  for v, e, q in zip(fed.validators.values(), entries[2 + n:], qualities)]
        block = ledger.propose([*entries[:2 + n], *attest], time=10**10)
        balances = block.state.balances()
        minted = {c: balances[c] for c in fed.clients}
        ordered = sorted(qualities)
        q = (ordered[1] + ordered[2]) // 2
        assert minted == {c: reward * w * q // (sum(weights) * 1_000_000)
                          for c, w in fed.weights.items()}
        assert sum(minted.values()) == block.state.rounds()[-1]["minted"] <= reward
        assert entries[1 + n].type == ROUND_CLOSE
