"""No client input crashes a round, in any protocol.

A client that skips our encoder sends arbitrary bytes, or arbitrary values in the
protocol's domain (masking: uint32 levels; Paillier: plaintexts in [0, n); CKKS and plain:
floats of any size). Whatever one or two such clients send, the round ends in a block
(closed, or aborted with its reason and everyone's spend), the next round runs, the
ledger verifies, and no honest client's input is dropped without a record.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_safetensors

from bfl_private.audit import audit
from bfl_private.coordinator import Federation
from bfl_private.fedavg import aggregate_violation
from bfl_private.ledger.entries import ABORT, ROUND_CLOSE, SUBMISSION
from bfl_private.protocol_setup import build_protocol
from bfl_private.protocols.base import ForgedInput
from bfl_private.protocols.errors import InvalidAggregate
from bfl_private.protocols.masking_messages import MaskedInput
from bfl_private.protocols.paillier import PaillierProtocol, encrypt
from bfl_private.protocols.quantize import FixedPointCodec
from bfl_private.runner import RoundOptions, run_command

CLIENTS = 4
PROTOCOLS = ("plain", "masking", "paillier", "ckks")


@pytest.fixture(scope="module")
def federation_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("malicious") / "fed"
    run_command(directory, RoundOptions(epsilon=0.5, rounds=1, clients=CLIENTS, protocol="plain", budget=1e4),
                quiet=True)
    return directory


def _foreign_dtype_blob(name: str, dtype: str) -> bytes:
    header = json.dumps({name: {"dtype": dtype, "shape": [2], "data_offsets": [0, 4]}}).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + bytes(4)


def _blob_like(draw, length: int) -> bytes:
    """Bytes an attacker might send: random, or a well-formed safetensors blob holding
    tensors of the wrong name, type, shape or content."""
    kind = draw(st.sampled_from(["random", "tensor", "foreign dtype"]))
    if kind == "random":
        return draw(st.binary(max_size=400))
    if kind == "foreign dtype":  # a dtype numpy lacks: safetensors raises KeyError, not its own error
        return _foreign_dtype_blob(draw(st.sampled_from(["update", "masked", "ciphertexts"])),
                                   draw(st.sampled_from(["BF16", "F8_E4M3"])))
    name = draw(st.sampled_from(["update", "masked", "ciphertexts", "key_id", "x"]))
    dtype = draw(st.sampled_from([np.uint8, np.uint32, np.float32, np.int64]))
    size = draw(st.sampled_from([0, 1, length - 1, length, length + 1]))
    values = np.frombuffer(draw(st.binary(min_size=size * np.dtype(dtype).itemsize,
                                          max_size=size * np.dtype(dtype).itemsize)), dtype=dtype)
    return save_safetensors({name: values.copy()})


def _forgery(draw, protocol: str, fed: Federation, client: str, round_id: int, length: int) -> ForgedInput:
    if draw(st.booleans()):
        if protocol == "masking" and draw(st.booleans()):
            # A well-framed masked input, for any round, in any sender's name.
            sender = draw(st.integers(0, CLIENTS))
            levels = np.asarray(draw(st.lists(st.integers(0, 2**32 - 1), min_size=length, max_size=length)),
                                dtype=np.uint32)
            return ForgedInput(message=MaskedInput(draw(st.sampled_from([round_id, round_id + 1])),
                                                   sender, levels).to_bytes())
        return ForgedInput(message=_blob_like(draw, length))
    if protocol == "masking":
        scale = draw(st.sampled_from([2**16, 2**32]))  # in range of one level, or anywhere in Z_2^32
        return ForgedInput(values=np.asarray(
            draw(st.lists(st.integers(0, scale - 1), min_size=length, max_size=length)), dtype=np.uint32))
    if protocol == "paillier":
        setup = build_protocol("paillier", fed.settings, fed.round_parties, participants=sorted(fed.clients))
        assert isinstance(setup.protocol, PaillierProtocol)
        n = setup.protocol.public_key.n
        count = setup.protocol.layout(length).ciphertexts
        return ForgedInput(values=tuple(draw(st.lists(st.integers(0, n - 1), min_size=count, max_size=count))))
    # CKKS encodes values up to about 2^19 at scale 2^40 (its encoder refuses more); plain any.
    magnitude = draw(st.sampled_from([1.0, 1e3, 4e5] if protocol == "ckks" else [1.0, 1e3, 1e30]))
    value = st.floats(-magnitude, magnitude)
    if protocol == "plain":
        value = value | st.sampled_from([np.nan, np.inf, -np.inf])
    return ForgedInput(values=np.asarray(draw(st.lists(value, min_size=length, max_size=length))))


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
# No shrinking: each example is a whole round (training, protocol, validators, a block).
@settings(max_examples=6, deadline=None, phases=[Phase.explicit, Phase.reuse, Phase.generate],
          suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                 HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data())
def test_forged_inputs_never_crash_a_round_and_the_ledger_verifies(federation_dir: Path, protocol: str, data) -> None:
    fed = Federation.open(federation_dir)
    try:
        participants = sorted(fed.clients)
        forgers = data.draw(st.lists(st.sampled_from(participants), min_size=1, max_size=2, unique=True))
        round_id = fed.ledger.state.last_round + 1
        length = fed.current_model().shape[0] + 1
        forged = {c: _forgery(data.draw, protocol, fed, c, round_id, length) for c in forgers}
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        summary = fed.run_round(plan, protocol=protocol, dropout=0.0, malicious=0,
                                rng=np.random.default_rng(), forged=forged)
        entries = [e for e in fed.ledger.entries() if e.round == round_id]
        honest = sorted(set(participants) - set(forgers))
        submitted = {e.payload["client"] for e in entries if e.type == SUBMISSION}
        if summary.status == "aborted":
            (abort,) = [e for e in entries if e.type == ABORT]
            assert abort.payload["reason"]
            # Every honest hospital's update left it, so each is posted and charged.
            assert set(honest) <= submitted <= set(abort.payload["cumulative_epsilon"])
        else:
            (close,) = [e for e in entries if e.type == ROUND_CLOSE]
            # Honest inputs are never dropped: each is summed. A forger is summed or named.
            assert set(honest) <= set(close.payload["survivors"])
            assert set(forgers) <= set(close.payload["survivors"]) | set(close.payload["rejected"])
        assert fed.ledger.state.last_round == round_id
    finally:
        fed.close()


@pytest.mark.slow
def test_after_every_forgery_the_whole_ledger_verifies(federation_dir: Path) -> None:
    # Runs after the property test above (file order): every round it added is checked.
    report = audit(federation_dir)
    assert report.ok, report.report.failure


def test_a_shrunk_weight_is_refused_not_averaged() -> None:
    # The attack from the issue: one client sets the decoded weight near zero, which would
    # blow the FedAvg step up by ~5e5. The weights are public, so the rule refuses it.
    total = np.array([0.3, -0.2, 0.0001])
    reason = aggregate_violation(total, weights=[0.5, 0.25], bound=1.0, tolerance=1e-4)
    assert reason is not None and "differs from the included clients' registered weights" in reason
    assert aggregate_violation(np.array([0.3, -0.2, 0.75]), weights=[0.5, 0.25], bound=1.0, tolerance=1e-4) is None
    # each coordinate within Σw·bound (+ the encoding error): 0.75 is the most two can reach
    assert aggregate_violation(np.array([0.76, 0.0, 0.75]), weights=[0.5, 0.25], bound=1.0, tolerance=1e-4)
    assert aggregate_violation(np.array([np.inf, 0.0, 0.75]), weights=[0.5, 0.25], bound=1.0, tolerance=1e-4)


def test_an_out_of_range_masked_sum_is_an_invalid_aggregate_with_what_arrived() -> None:
    from bfl_private.protocols.masking import MaskingProtocol

    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=3)
    updates = {c: np.zeros(5, np.float32) for c in ("a", "b", "c")}
    forged = {"c": ForgedInput(values=np.full(5, 2**31, np.uint32))}
    with pytest.raises(InvalidAggregate, match="not a sum of valid encodings") as caught:
        MaskingProtocol(codec).aggregate(updates, round_id=1, round_seed=bytes(32), forged=forged)
    assert set(caught.value.received) == {"a", "b", "c"} and caught.value.stage == "decode"


def test_a_close_that_breaks_the_weight_rule_fails_the_verifier_even_if_everyone_signed(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import bfl_private.rounds.engine as engine_module
    import bfl_private.validator as validator_module
    from bfl_private import round_checks

    directory = tmp_path / "fed"
    run_command(directory, RoundOptions(epsilon=0.5, rounds=1, clients=CLIENTS, protocol="plain", budget=1e4),
                quiet=True)
    fed = Federation.open(directory)
    try:
        length = fed.current_model().shape[0] + 1
        shrunk = np.zeros(length)
        shrunk[-1] = 1e-4  # in range for plain, but not the hospital's registered weight
        plan = fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False)
        # A coordinator and validators that skip the rule (they run someone else's code):
        monkeypatch.setattr(engine_module, "aggregate_rule_violation", lambda *a, **k: None)
        original = round_checks.aggregate_rule_violation
        monkeypatch.setattr(round_checks, "aggregate_rule_violation", lambda *a, **k: None)
        summary = fed.run_round(plan, protocol="plain", dropout=0.0, malicious=0, rng=np.random.default_rng(),
                                forged={sorted(fed.clients)[0]: ForgedInput(values=shrunk)})
        assert summary.status in ("accepted", "rejected")
        monkeypatch.setattr(round_checks, "aggregate_rule_violation", original)
        assert validator_module.check_round_aggregate is round_checks.check_round_aggregate
    finally:
        fed.close()
    report = audit(directory).report
    assert not report.ok
    assert report.failure.number == 8 and "registered weights" in report.failure.detail


@pytest.fixture(scope="module")
def he_protocols():
    from bfl_private.protocols.ckks import CkksKeyHolder, CkksProtocol
    from bfl_private.protocols.paillier import PaillierKeyHolder
    from bfl_private.protocols.plain import PlainProtocol

    paillier = PaillierKeyHolder.generate(bits=1024)
    ckks = CkksKeyHolder.generate()
    return {
        "plain": PlainProtocol(bound=1.0),
        "paillier": PaillierProtocol(public_key=paillier.public_key, key_holder=paillier,
                                     codec=FixedPointCodec(clip=1.0, bits=16, max_summands=4), workers=1),
        "ckks": CkksProtocol(public_context=ckks.public_context, key_holder=ckks, clip=1.0, max_summands=4),
    }


@pytest.mark.parametrize("protocol", ["plain", "paillier", "ckks"])
def test_a_dtype_numpy_lacks_is_rejected_by_name(he_protocols, protocol: str) -> None:
    updates = {c: np.zeros(6, np.float32) for c in ("h1", "h2", "h3")}
    blob = _foreign_dtype_blob({"plain": "update", "paillier": "ciphertexts", "ckks": "ciphertexts"}[protocol], "BF16")
    result = he_protocols[protocol].aggregate(updates, round_id=1, round_seed=bytes(32),
                                              forged={"h3": ForgedInput(message=blob)})
    assert result.included == ("h1", "h2") and "KeyError" in result.rejected["h3"]


def test_a_ckks_chunk_holding_two_ciphertexts_is_rejected(he_protocols) -> None:
    import tenseal as ts

    from bfl_private.protocols.ckks import encode_submission

    protocol = he_protocols["ckks"]
    one = ts.ckks_vector(protocol.context, [0.0] * 6).serialize()
    blob = encode_submission(protocol.public_context, [one + one])  # protobuf merges the repeated field
    updates = {c: np.zeros(6, np.float32) for c in ("h1", "h2", "h3")}
    result = protocol.aggregate(updates, round_id=1, round_seed=bytes(32), forged={"h3": ForgedInput(message=blob)})
    assert "holds 2 ciphertexts" in result.rejected["h3"]


@pytest.mark.parametrize("protocol", ["paillier", "ckks"])
def test_a_copy_in_another_header_is_a_replay_and_neither_copy_is_summed(he_protocols, protocol: str) -> None:
    from safetensors.numpy import load, save

    updates = {c: np.full(6, 0.1 * i, np.float32) for i, c in enumerate(("h1", "h2", "h3", "h4"))}
    first = he_protocols[protocol].aggregate(updates, round_id=1, round_seed=bytes(32))
    copied = save(load(first.submissions["h1"]), metadata={"re": "wrapped"})  # same ciphertexts, new bytes
    result = he_protocols[protocol].aggregate(updates, round_id=2, round_seed=bytes(32),
                                              forged={"h4": ForgedInput(message=copied), "h1": ForgedInput(
                                                  message=first.submissions["h1"])})
    assert set(result.rejected) == {"h1", "h4"} and result.included == ("h2", "h3")
    # Paillier ciphertexts carry proofs bound to round and sender, which no copy can carry;
    # CKKS has none, so its copies are caught as the same content.
    expected = "does not verify" if protocol == "paillier" else "replayed"
    assert expected in result.rejected["h4"] and expected in result.rejected["h1"]


def test_weights_too_small_for_the_encoding_are_refused_not_averaged() -> None:
    reason = aggregate_violation(np.array([0.0, 3e-5]), weights=[1e-5] * 3, bound=1.0, tolerance=9e-5)
    assert reason is not None and "could not be told from zero" in reason


def test_an_update_bound_below_the_weight_is_refused_at_genesis() -> None:
    from bfl_private.settings import SettingsError, TrainingConfig

    with pytest.raises(SettingsError, match="update_bound must be >= 1"):
        TrainingConfig(update_bound=0.5)


def test_an_old_paillier_submission_cannot_be_replayed_where_only_colluders_remain(he_protocols) -> None:
    """The attack: two colluders alone in a round resubmit a victim's ciphertexts from an
    earlier round (re-randomised, so no hash matches) plus their own; the decrypted "sum"
    would reveal the victim's update. The proofs bind each ciphertext to round and sender."""
    from bfl_private.protocols.paillier import ProvenCiphertext, decode_submission, encode_submission

    protocol = he_protocols["paillier"]
    updates = {c: np.full(6, 0.05 * (i + 1), np.float32) for i, c in enumerate(("victim", "c1", "c2", "c3"))}
    earlier = protocol.aggregate(updates, round_id=1, round_seed=bytes(32))
    layout = protocol.layout(6)
    pk = protocol.public_key
    old = decode_submission(earlier.submissions["victim"], public_key=pk, layout=layout, client="victim", round_id=1)
    fresh = [p.ciphertext for p in encrypt(pk, [0] * len(old), context=b"x", workers=1)]
    proofs = [p.proof for p in encrypt(pk, [0] * len(old), context=b"y", workers=1)]
    replayed = encode_submission(pk, [ProvenCiphertext(c * r % pk.nsquare, proof) for c, r, proof in zip(old, fresh, proofs)])
    result = protocol.aggregate({**updates}, round_id=2, round_seed=bytes(32),
                                forged={"c1": ForgedInput(message=replayed)}, drop={"victim": "advertise"})
    assert "does not verify" in result.rejected["c1"] and result.included == ("c2", "c3")


@pytest.mark.parametrize("protocol", ["paillier", "plain"])
def test_a_copy_of_another_hospitals_ciphertext_is_named_not_dropped(federation_dir: Path, protocol: str) -> None:
    """Two forgers sending the very same bytes (hypothesis once drew this): the first is
    taken as sent, the copy is named in the close's rejected (uncharged), never a silent dropout."""
    fed = Federation.open(federation_dir)
    try:
        first, copy = sorted(fed.clients)[:2]
        blob = save_safetensors({"x": np.zeros(3, np.float32)})
        summary = fed.run_round(fed.plan(epsilon=0.5, rounds=1, skip_exhausted=False), protocol=protocol,
                                dropout=0.0, malicious=0, rng=np.random.default_rng(),
                                forged={first: ForgedInput(message=blob), copy: ForgedInput(message=blob)})
        entries = [e for e in fed.ledger.entries() if e.round == summary.round]
        if summary.status != "aborted":
            (close,) = [e for e in entries if e.type == ROUND_CLOSE]
            assert "repeats that of" in close.payload["rejected"][copy]
            assert first in set(close.payload["survivors"]) | set(close.payload["rejected"])
        assert copy not in {e.payload["client"] for e in entries if e.type == SUBMISSION}  # uncharged
    finally:
        fed.close()
    report = audit(federation_dir)
    assert report.ok, report.report.failure
