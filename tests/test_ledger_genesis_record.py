"""The genesis payload as a typed record (ledger/genesis.py): it re-encodes to exactly the
JSON it was parsed from (new and frozen ledgers alike), and refuses malformed payloads
with MalformedRecord naming where."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
from bfl_private.ledger.canonical import canonical_bytes, parse_canonical
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.entries import GENESIS, ROUND_OPEN, Entry
from bfl_private.ledger.errors import MalformedRecord
from bfl_private.ledger.genesis import (
    GenesisRecord,
    Normalisation,
    RegisteredClient,
    RegisteredParty,
    Rewards,
)
from bfl_private.ledger.identity import SigningIdentity
from bfl_private.ledger.store import DATABASE, SQLiteStore
from hypothesis import given, settings
from hypothesis import strategies as st
from known_answer_vectors import known_answers
from ledger_fixtures import Federation as LedgerFederation

from bfl_private.coordinator import Federation
from bfl_private.settings import RANDOMNESS_LEGACY, FederationSettings, ProtocolSettings

# --- round trips ------------------------------------------------------------------------


def test_a_created_federations_genesis_round_trips_to_the_same_signed_bytes(tmp_path: Path) -> None:
    settings = dataclasses.replace(FederationSettings(n_clients=3), protocol=ProtocolSettings(paillier_key_bits=2048))
    fed = Federation.create(tmp_path / "fed", settings, model_seed=0)
    try:
        entry, identity = fed.ledger.genesis(), fed.coordinator.identity
        state = fed.ledger.state
    finally:
        fed.close()
    record = GenesisRecord.of(entry)
    assert record.to_json() == entry.payload
    # Ed25519 is deterministic: the record's JSON signed again is the very entry on the ledger.
    assert Entry.create(identity, GENESIS, 0, record.to_json()).to_bytes() == entry.to_bytes()
    assert record.federation_id == state.federation_id and record.quorum == state.quorum
    assert FederationSettings.from_json(record.settings) == settings
    assert [c.id for c in record.clients] == sorted(state.clients())
    assert {c.id: c.data_weight for c in record.clients} == state.data_weights()
    assert all(isinstance(c, RegisteredClient) for c in record.clients)
    assert {v.key().key_id_hex for v in record.validators} == set(state.validator_keys())
    assert record.members == (record.coordinator, *record.clients, *record.validators)


def _frozen_geneses() -> list[Any]:
    params = []
    for answers in known_answers("ledgers"):
        for name in answers.data:
            store = SQLiteStore.open(answers.ledger(name) / DATABASE, read_only=True)  # writes nothing beside it
            try:
                ((_, _, data),) = store.entry_rows(0, 1)
            finally:
                store.close()
            params.append(pytest.param(bytes(data), id=f"{answers.id}/{name}"))
    return params


@pytest.mark.parametrize("data", _frozen_geneses())
def test_a_frozen_ledgers_genesis_re_encodes_byte_for_byte(data: bytes) -> None:
    entry = Entry.from_bytes(data, where="entry 0")
    record = GenesisRecord.of(entry, where="entry 0")
    assert canonical_bytes(record.to_json()) == canonical_bytes(entry.payload)
    assert canonical_bytes({**parse_canonical(data, where="entry 0"), "payload": record.to_json()}) == data
    # Frozen before the validator beacon: its settings name no round_randomness, and the
    # record keeps them so; the application reads them as the legacy rule, as before.
    assert "round_randomness" not in record.settings
    assert FederationSettings.from_json(record.settings).round_randomness == RANDOMNESS_LEGACY


@pytest.mark.parametrize("answers", known_answers("entries"), ids=lambda a: a.id)
def test_the_frozen_genesis_entry_re_signs_to_its_bytes(answers) -> None:
    frozen = next(e for e in answers.data["entries"] if e["type"] == GENESIS)
    data = bytes.fromhex(frozen["bytes_hex"])
    record = GenesisRecord.of(Entry.from_bytes(data, where=frozen["name"]))
    seed = bytes.fromhex(answers.data["identities"][frozen["signer"]]["seed_hex"])
    signer = SigningIdentity.from_private_bytes(frozen["signer"], seed)
    assert Entry.create(signer, GENESIS, 0, record.to_json()).to_bytes() == data


# --- malformed payloads -------------------------------------------------------------------


@pytest.fixture(scope="module")
def payload() -> dict[str, Any]:
    return dict(LedgerFederation().genesis().payload)


def _changed(payload: dict[str, Any], change: str) -> Any:
    clients = [dict(c) for c in payload["clients"]]
    if change == "missing field":
        return {k: v for k, v in payload.items() if k != "quorum"}
    if change == "extra field":
        return {**payload, "round_randomness": "validator-beacon-v1"}
    if change == "extra client field":
        clients[0]["balance"] = 0
    elif change == "bool quorum":
        return {**payload, "quorum": True}
    elif change == "bool data weight":
        clients[1]["data_weight"] = True
    elif change == "bool reward":
        return {**payload, "rewards": {**payload["rewards"], "validator_reward": False}}
    elif change == "duplicate client id":
        clients[1]["id"] = clients[0]["id"]
    elif change == "client id of a validator":
        clients[0]["id"] = payload["validators"][0]["id"]
    elif change == "non-string client vkey":
        clients[1]["vkey"] = 12345
    elif change == "non-string coordinator vkey":
        return {**payload, "coordinator": {**payload["coordinator"], "vkey": None}}
    elif change == "not an object":
        return [payload]
    return {**payload, "clients": clients}


@pytest.mark.parametrize(("change", "message"), [
    ("missing field", r"test genesis genesis payload: missing fields \['quorum'\]"),
    ("extra field", r"unknown fields \['round_randomness'\]"),
    ("extra client field", r"clients\[0\]: missing fields \[\], unknown fields \['balance'\]"),
    ("bool quorum", r"\.quorum: must be an integer"),
    ("bool data weight", r"clients\[1\]\.data_weight: must be an integer"),
    ("bool reward", r"rewards\.validator_reward: must be an integer"),
    ("duplicate client id", r"test genesis: participant ids must be unique across roles, \['client-0'\] repeat"),
    ("client id of a validator", r"unique across roles, \['validator-0'\] repeat"),
    ("non-string client vkey", r"clients\[1\]\.vkey: must be a non-empty string"),
    ("non-string coordinator vkey", r"coordinator\.vkey: must be a non-empty string"),
    ("not an object", r"test genesis genesis payload: must be a JSON object"),
])
def test_malformed_genesis_payloads_are_refused_naming_where(payload: dict[str, Any], change: str,
                                                              message: str) -> None:
    with pytest.raises(MalformedRecord, match=message):
        GenesisRecord.from_json(_changed(payload, change), where="test genesis")


def test_only_a_genesis_entry_has_a_genesis_record() -> None:
    fed = LedgerFederation()
    opening = Entry.create(fed.coordinator, ROUND_OPEN, 1, {
        "participants": ["client-0"], "protocol": "plain", "protocol_params": {},
        "base_model_cid": None, "privacy_plan": {}})
    with pytest.raises(MalformedRecord, match="entry 3: a round_open entry, not the genesis entry"):
        GenesisRecord.of(opening, where="entry 3")


# --- property: to_json / from_json --------------------------------------------------------

_IDS = st.from_regex(r"[A-Za-z0-9._-]{1,16}", fullmatch=True)
_JSON_INT = st.integers(-(2**53) + 1, 2**53 - 1)
_SETTINGS = st.dictionaries(st.text(max_size=8), st.one_of(_JSON_INT, st.text(max_size=8), st.booleans(), st.none(),
                                                            st.lists(_JSON_INT, max_size=3)), max_size=4)
_POSITIVE = st.one_of(st.integers(1, 10**6), st.floats(1e-6, 1e6))


@st.composite
def genesis_records(draw: st.DrawFn) -> GenesisRecord:
    n_clients, n_validators = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    ids = draw(st.lists(_IDS, min_size=1 + n_clients + n_validators, max_size=1 + n_clients + n_validators,
                        unique=True))
    vkeys = st.text(min_size=1, max_size=24)
    clients = tuple(RegisteredClient(name, draw(vkeys), epsilon_budget=draw(_POSITIVE),
                                     delta=draw(st.floats(1e-12, 0.999)), data_weight=draw(st.integers(1, 10**9)))
                    for name in ids[1:1 + n_clients])
    width = draw(st.integers(1, 4))
    return GenesisRecord(
        federation_id=draw(_IDS), settings=draw(_SETTINGS), quorum=draw(st.integers(1, 10)),
        rewards=Rewards(*(draw(st.integers(0, 10**9)) for _ in range(4))),
        coordinator=RegisteredParty(ids[0], draw(vkeys)), clients=clients,
        validators=tuple(RegisteredParty(name, draw(vkeys)) for name in ids[1 + n_clients:]),
        initial_model_cid=draw(st.one_of(st.none(), st.binary(max_size=8).map(cid_for))),
        normalisation=Normalisation(draw(st.text(min_size=1, max_size=16)), draw(st.integers(0, 10**6)),
                                    tuple(draw(st.lists(st.floats(-1e6, 1e6), min_size=width, max_size=width))),
                                    tuple(draw(st.lists(_POSITIVE, min_size=width, max_size=width)))))


@settings(max_examples=60, deadline=None)
@given(genesis_records())
def test_to_json_and_from_json_round_trip(record: GenesisRecord) -> None:
    assert GenesisRecord.from_json(record.to_json(), where="property") == record
    # Through its canonical bytes, as a genesis entry carries it (1.0 comes back as 1).
    data = canonical_bytes(record.to_json())
    assert canonical_bytes(GenesisRecord.from_json(parse_canonical(data, where="property"),
                                                   where="property").to_json()) == data
