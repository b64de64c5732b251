"""CKKS aggregation (TenSEAL): documented error bound, public-context aggregator, bad input."""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest
import tenseal as ts
from bfl_private.protocols.base import recompute_total
from bfl_private.protocols.ckks import (
    MAX_COEFF_BITS_128,
    CkksKeyHolder,
    CkksParameters,
    CkksProtocol,
    decode_submission,
    encode_submission,
    encrypt_update,
    load_public_context,
    recompute_from_submissions,
)
from bfl_private.protocols.errors import (
    AggregateMismatch,
    ConfigurationError,
    HeadroomExceeded,
    MalformedInput,
    ReplayedMessage,
    TooManyDropouts,
    WrongKey,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

CLIP = 1.0


@pytest.fixture(scope="module")
def holder() -> CkksKeyHolder:
    return CkksKeyHolder.generate()


@pytest.fixture(scope="module")
def other_holder() -> CkksKeyHolder:
    return CkksKeyHolder.generate()


def _protocol(holder, max_summands=10):
    return CkksProtocol(public_context=holder.public_context, key_holder=holder, clip=CLIP, max_summands=max_summands)


def _updates(clients=3, length=5000, seed=0, scale=0.7):
    rng = np.random.default_rng(seed)
    return {f"client-{i}": rng.normal(0.0, scale, length) for i in range(clients)}


def test_default_parameters_meet_the_128_bit_table():
    p = CkksParameters()
    assert (p.poly_modulus_degree, p.slots, p.data_bits) == (8192, 4096, 60)
    assert sum(p.coeff_mod_bit_sizes) <= MAX_COEFF_BITS_128[8192] == 218
    assert 1e-6 < p.error_bound(summands=10, clip=1.0) < 5e-6  # the figure the docstring quotes
    with pytest.raises(ConfigurationError, match="<= 218 bits"):
        CkksParameters(coeff_mod_bit_sizes=(60, 60, 60, 60))
    with pytest.raises(ConfigurationError):
        CkksParameters(poly_modulus_degree=6000)
    with pytest.raises(ConfigurationError):
        CkksParameters(scale_bits=59)


def test_the_aggregator_holds_no_secret_key(holder):
    proto = _protocol(holder)
    assert not proto.context.is_private() and not proto.context.has_relin_keys()
    secret = base64.b64decode(json.loads(holder.to_private_bytes())["context"])
    with pytest.raises(MalformedInput, match="holds a secret key"):
        load_public_context(secret)


@settings(max_examples=5, deadline=None)
@given(clients=st.integers(2, 6), length=st.integers(1, 9000), seed=st.integers(0, 2**32 - 1),
       scale=st.sampled_from([0.01, 0.5, 3.0]))
def test_sum_is_within_the_documented_error(holder, clients, length, seed, scale):
    updates = _updates(clients, length, seed, scale)
    result = _protocol(holder).aggregate(updates, round_id=1, round_seed=b"s" * 32)
    exact = np.sum([np.clip(v, -CLIP, CLIP) for v in updates.values()], axis=0)
    bound = CkksParameters().error_bound(summands=clients, clip=CLIP)
    step = CkksParameters().published_step(summands=clients)
    assert result.total.shape == (length,)
    assert np.max(np.abs(result.total - exact)) <= bound + step / 2
    assert np.array_equal(np.round(result.total / step) * step, result.total)  # rounded before publication
    assert result.transcript["error_bound"] == bound and result.transcript["published_step"] == step


def test_published_step_is_a_power_of_two_far_above_the_error_bound():
    p = CkksParameters()
    for summands in range(1, 16):
        step, bound = p.published_step(summands=summands), p.error_bound(summands=summands, clip=1.0)
        assert step == 2.0 ** round(np.log2(step))
        assert 2**10 * bound <= step < 2**11 * bound  # the documented margin, and no coarser
    assert p.published_step(summands=10) == 2.0**-8  # the figure the docstring quotes


def test_published_total_hides_the_decryption_error(holder):
    """The unrounded decryption differs from the exact sum by the CKKS error; what is
    published is the same for every decryption of that sum (up to rare midpoint slots)."""
    updates = _updates(4, 3000, 11, 0.5)
    first = _protocol(holder).aggregate(updates, round_id=1, round_seed=b"s" * 32)
    second = _protocol(holder).aggregate(updates, round_id=2, round_seed=b"s" * 32)  # fresh encryption noise
    assert first.transcript["aggregate_sha256"] != second.transcript["aggregate_sha256"]
    differs = np.mean(first.total != second.total)
    assert differs <= 2 * 2.0**-9  # midpoint slots only; unrounded, every slot would differ


def test_round_recomputes_and_says_decryption_is_not_provable(holder):
    result = _protocol(holder).aggregate(_updates(length=9000), round_id=2, round_seed=b"s" * 32)
    assert result.decryption_provable is False and result.transcript["decryption_provable"] is False
    assert len(result.transcript["aggregate_sha256"]) == 3  # 9000 values in 4096-slot chunks
    transcript = json.loads(json.dumps(result.transcript))
    assert np.array_equal(recompute_total("ckks", transcript, result.submissions), result.total)


@pytest.fixture(scope="module")
def round_result(holder):
    return _protocol(holder).aggregate(_updates(length=5000), round_id=3, round_seed=b"s" * 32)


def test_recompute_rejects_tampering(holder, round_result):
    t = json.loads(json.dumps(round_result.transcript))
    t["aggregate_sha256"][1] = "0" * 64
    with pytest.raises(AggregateMismatch):
        recompute_from_submissions(t, round_result.submissions)
    other = _protocol(holder).aggregate(_updates(length=5000, seed=4), round_id=4, round_seed=b"s" * 32)
    swapped = {**round_result.submissions, "client-0": other.submissions["client-0"]}
    with pytest.raises(AggregateMismatch):
        recompute_from_submissions(round_result.transcript, swapped)
    t = json.loads(json.dumps(round_result.transcript))
    t["decrypted_total"][0] = 1e6  # out of any possible range
    with pytest.raises(MalformedInput, match="within"):
        recompute_from_submissions(t, round_result.submissions)
    t = json.loads(json.dumps(round_result.transcript))
    t["decrypted_total"][0] += 1e-7  # in range, but carrying digits below the published step
    with pytest.raises(MalformedInput, match="not rounded to the published step"):
        recompute_from_submissions(t, round_result.submissions)
    t = json.loads(json.dumps(round_result.transcript))
    t["published_step"] = t["published_step"] / 2
    with pytest.raises(MalformedInput, match="published step"):
        recompute_from_submissions(t, round_result.submissions)
    t = json.loads(json.dumps(round_result.transcript))
    t["public_context"] = t["public_context"][:-100]
    with pytest.raises(MalformedInput):
        recompute_from_submissions(t, round_result.submissions)


def _retile(blob, transform):
    tensors = dict(load_safetensors(blob))
    transform(tensors)
    return save_safetensors(tensors)


def test_submission_checks(holder, other_holder, round_result):
    proto = _protocol(holder)
    blob = round_result.submissions["client-0"]

    def check(b, length=5000):
        decode_submission(b, context=proto.context, public_context=holder.public_context, length=length, client="c7")

    with pytest.raises(MalformedInput, match="'c7' is not a safetensors blob"):
        check(blob[:-10])
    foreign = encrypt_update(np.zeros(5000), context=load_public_context(other_holder.public_context),
                             public_context=other_holder.public_context, clip=CLIP)
    with pytest.raises(WrongKey, match="'c7'"):
        check(foreign)
    with pytest.raises(MalformedInput, match="must hold 1 ciphertexts"):
        check(blob, length=100)

    def cut_first(tensors):  # a truncated ciphertext inside a well-formed blob
        offsets = tensors["offsets"].copy()
        data = np.delete(tensors["ciphertexts"], np.s_[offsets[1] - 50: offsets[1]])
        offsets[1:] -= 50
        tensors.update(ciphertexts=data, offsets=offsets)

    with pytest.raises(MalformedInput, match="ciphertext 0 does not parse"):
        check(_retile(blob, cut_first))

    def lie_about_offsets(tensors):
        tensors["offsets"] = tensors["offsets"][::-1].copy()

    with pytest.raises(MalformedInput, match="do not tile"):
        check(_retile(blob, lie_about_offsets))
    wrong_scale = [ts.ckks_vector(proto.context, np.zeros(size), scale=2.0**30).serialize() for size in (4096, 904)]
    with pytest.raises(MalformedInput, match="scale"):
        check(encode_submission(holder.public_context, wrong_scale))
    small = CkksKeyHolder.generate(parameters=CkksParameters(poly_modulus_degree=4096, coeff_mod_bit_sizes=(40, 30),
                                                             scale_bits=25))
    other_params = [ts.ckks_vector(load_public_context(small.public_context), np.zeros(2048)).serialize()] * 3
    with pytest.raises(MalformedInput, match="does not parse under the round's context"):
        check(encode_submission(holder.public_context, other_params[:2]))


def test_key_holder_refuses_what_it_did_not_recompute(holder, round_result):
    subs = round_result.submissions
    digests = round_result.transcript["aggregate_sha256"]
    with pytest.raises(AggregateMismatch):
        holder.decrypt_aggregate(subs, length=5000, max_summands=10, claimed_sha256=digests[::-1])
    with pytest.raises(TooManyDropouts, match="at least 2"):
        holder.decrypt_aggregate({"client-0": subs["client-0"]}, length=5000, max_summands=10)
    with pytest.raises(ReplayedMessage, match="repeats that of 'client-0'"):
        holder.decrypt_aggregate({**subs, "mallory": subs["client-0"]}, length=5000, max_summands=10)
    with pytest.raises(HeadroomExceeded):
        holder.decrypt_aggregate(subs, length=5000, max_summands=2)


def test_secret_context_round_trip_and_malformed_records(holder, round_result):
    again = CkksKeyHolder.from_private_bytes(holder.to_private_bytes())
    assert again.parameters == holder.parameters
    decryption = again.decrypt_aggregate(round_result.submissions, length=5000, max_summands=10)
    assert np.max(np.abs(decryption.total - round_result.total)) <= round_result.transcript["published_step"]
    record = json.loads(holder.to_private_bytes())
    for bad in (b"[", json.dumps({**record, "format": "v0"}).encode(),
                json.dumps({**record, "context": record["context"][:1000]}).encode(),
                json.dumps({**record, "parameters": {**record["parameters"], "scale_bits": 30}}).encode()):
        with pytest.raises(MalformedInput):
            CkksKeyHolder.from_private_bytes(bad)


def test_configuration_and_drops(holder, other_holder):
    with pytest.raises(WrongKey):
        CkksProtocol(public_context=other_holder.public_context, key_holder=holder, clip=1.0, max_summands=3)
    with pytest.raises(HeadroomExceeded, match="largest safely decoded sum"):
        CkksProtocol(public_context=holder.public_context, key_holder=holder, clip=1e5, max_summands=10)
    updates = _updates(clients=4, length=100)
    result = _protocol(holder).aggregate(updates, round_id=5, round_seed=b"s" * 32,
                                         drop={"client-0": "advertise", "client-3": "unmask"})
    assert result.dropped == ("client-0",) and result.included == ("client-1", "client-2", "client-3")
    with pytest.raises(HeadroomExceeded):
        _protocol(holder, max_summands=2).aggregate(updates, round_id=6, round_seed=b"s" * 32)
