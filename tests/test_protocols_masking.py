"""SecAgg / SecAgg+ masking: exactness under dropouts, privacy checks, bad input, auditing."""

from __future__ import annotations

import copy
import hashlib
import os
import struct
from dataclasses import replace

import numpy as np
import pytest
from bfl_private.protocols import keyagreement as ka
from bfl_private.protocols import masking as masking_module
from bfl_private.protocols import shamir
from bfl_private.protocols.base import STAGES
from bfl_private.protocols.base import recompute_total as dispatch_recompute
from bfl_private.protocols.errors import (
    AggregateMismatch,
    BadShare,
    BadSignature,
    ConfigurationError,
    MalformedInput,
    ReplayedMessage,
    TooManyDropouts,
)
from bfl_private.protocols.masking import (
    MaskingClient,
    MaskingProtocol,
    MaskingServer,
    recompute_from_submissions,
    recompute_total,
    secure_sum,
)
from bfl_private.protocols.masking_graph import MaskingParams, default_threshold, neighbour_graph
from bfl_private.protocols.masking_messages import (
    Acknowledgements,
    KeyAdvertisement,
    MaskedInput,
    SealedShares,
    SurvivorSet,
    UnmaskResponse,
    commitment_payload,
    self_mask_commitment,
)
from bfl_private.protocols.prg import MaskExpander
from bfl_private.protocols.quantize import FixedPointCodec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import save as save_safetensors
from scipy.stats import chisquare


def plain_sum(vectors: list[np.ndarray], included) -> np.ndarray:
    """Independent reference: integer sum reduced mod 2^32."""
    total = np.zeros(vectors[0].shape[0], dtype=np.uint64)
    for i in included:
        total += vectors[i].astype(np.uint64)
    return (total % (1 << 32)).astype(np.uint32)


def random_vectors(n: int, length: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 1 << 32, length, dtype=np.uint32) for _ in range(n)]


# -- exactness ---------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(3, 12),
    length=st.integers(1, 40),
    data=st.data(),
)
def test_total_is_exact_for_any_graph_and_drop_pattern(n: int, length: int, data) -> None:
    neighbours = data.draw(st.one_of(st.none(), st.integers(2, n - 1)), label="neighbours")
    drop = data.draw(
        st.dictionaries(st.integers(0, n - 1), st.sampled_from(STAGES), max_size=n // 3),
        label="drop",
    )
    vectors = random_vectors(n, length, data.draw(st.integers(0, 2**31)))
    try:
        result = secure_sum(
            vectors, neighbours=neighbours, drop=drop, seed=data.draw(st.integers(0, 2**64))
        )
    except TooManyDropouts as abort:
        assert abort.stage in STAGES
        assert abort.available < abort.required
        assert set(abort.dropped) <= {str(i) for i in range(n)}
        assert drop, "a round without dropouts must never abort"
        return
    # Included: the clients whose masked input arrived. The server may also have pruned a
    # live client left with fewer than t live neighbours (its secrets would be unrecoverable).
    pruned = {i for i, stage in result.dropped.items() if i not in drop}
    assert all(result.dropped[i] in ("advertise", "share") for i in pruned)
    assert set(result.included) == {i for i in range(n) if drop.get(i) in (None, "unmask")} - pruned
    np.testing.assert_array_equal(result.total, plain_sum(vectors, result.included))
    np.testing.assert_array_equal(
        recompute_total(result.transcript, result.masked_vectors), result.total
    )
    for client, stage in drop.items():
        assert STAGES.index(result.dropped[client]) <= STAGES.index(stage)


def test_sparse_graph_at_scale_with_dropouts_in_every_stage() -> None:
    vectors = random_vectors(40, 1000, 1)
    drop = {3: "advertise", 11: "share", 22: "mask", 35: "unmask"}
    result = secure_sum(vectors, neighbours=12, drop=drop, seed=b"s" * 32)
    assert set(range(40)) - set(result.included) == {3, 11, 22}
    np.testing.assert_array_equal(result.total, plain_sum(vectors, result.included))
    np.testing.assert_array_equal(
        recompute_total(result.transcript, result.masked_vectors), result.total
    )


def test_too_many_dropouts_names_stage_counts_and_clients() -> None:
    vectors = random_vectors(5, 10, 2)  # complete graph: k = 4, t = 3
    with pytest.raises(TooManyDropouts, match=r"stage 'mask'.* 2, threshold 3") as info:
        secure_sum(vectors, drop={0: "mask", 1: "mask", 2: "mask"})
    abort = info.value
    assert (abort.stage, abort.required, abort.available) == ("mask", 3, 2)
    assert abort.dropped == {"0": "mask", "1": "mask", "2": "mask"}
    with pytest.raises(TooManyDropouts) as info:
        secure_sum(vectors, drop={0: "advertise", 1: "advertise", 2: "share"})
    assert info.value.stage in ("advertise", "share")


# -- privacy -----------------------------------------------------------------------------


def test_a_masked_vector_is_uniform_even_for_a_constant_input() -> None:
    vectors = [np.zeros(1 << 15, dtype=np.uint32) for _ in range(4)]
    result = secure_sum(vectors)
    masked = result.masked_vectors[0]
    counts = np.bincount(masked.view(np.uint8), minlength=256)
    # Fresh OS-random seeds: a false alarm has probability 1e-6; an unmasked input fails surely.
    assert chisquare(counts).pvalue > 1e-6
    top = np.bincount(masked >> 24, minlength=256)
    assert chisquare(top).pvalue > 1e-6
    np.testing.assert_array_equal(result.total, 0)


class Round:
    """Parties of one round, driven stage by stage so tests can inject messages."""

    def __init__(
        self, n: int = 6, *, neighbours: int | None = None, length: int = 8, round_id: int = 7
    ) -> None:
        self.params = MaskingParams.create(
            round_id=round_id,
            round_seed=b"r" * 32,
            clients=[f"c{i}" for i in range(n)],
            length=length,
            neighbours=neighbours,
        )
        self.identities = [Ed25519PrivateKey.generate() for _ in range(n)]
        self.keys = [ka.public_bytes(k) for k in self.identities]
        self.server = MaskingServer(self.params, identity_keys=self.keys)
        self.clients = [
            MaskingClient(i, self.params, identity=self.identities[i], identity_keys=self.keys)
            for i in range(n)
        ]
        self.inputs = random_vectors(n, length, round_id)

    def advertise(self) -> dict[int, list[bytes]]:
        self.adverts = {c.index: c.advertise() for c in self.clients}
        for data in self.adverts.values():
            self.server.receive_advertisement(data)
        return self.server.close_advertise()

    def share(self) -> dict[int, bytes]:
        views = self.advertise()
        self.bundles = {i: self.clients[i].share_keys(v) for i, v in views.items()}
        for data in self.bundles.values():
            self.server.receive_shares(data)
        return self.server.close_share()

    def mask(self) -> bytes:
        deliveries = self.share()
        self.deliveries = deliveries
        self.masked = {
            i: self.clients[i].mask_input(self.inputs[i], d) for i, d in deliveries.items()
        }
        for data in self.masked.values():
            self.server.receive_masked_input(data)
        return self.server.close_mask()


def test_server_lying_about_the_survivor_set_is_refused() -> None:
    r = Round(6)
    announcement = r.mask()
    honest = SurvivorSet.from_bytes(announcement)
    # The server tells client 0 that client 5 dropped (to collect key shares of 5), and
    # everyone else that 5 survived (to collect self-mask shares of 5).
    lie = SurvivorSet(honest.round_id, tuple(i for i in honest.survivors if i != 5)).to_bytes()
    acks = {0: r.clients[0].acknowledge(lie)}
    acks.update({i: r.clients[i].acknowledge(announcement) for i in range(1, 6)})
    signatures = tuple(
        (i, Acknowledgements.from_bytes(a, Acknowledgements.SINGLE).signatures[0][1])
        for i, a in sorted(acks.items())
    )
    everyone = Acknowledgements(
        Acknowledgements.LIST, honest.round_id, 0xFFFFFFFF, signatures
    ).to_bytes()
    without_5 = Acknowledgements(
        Acknowledgements.LIST, honest.round_id, 0xFFFFFFFF, signatures[:5]
    ).to_bytes()
    # Client 0 sees its peers signed another set; the others see client 0 signed another set.
    with pytest.raises(BadSignature, match="consistency check at client 0: client 1's signature"):
        r.clients[0].unmask(without_5)
    for i in (1, 2):
        with pytest.raises(
            BadSignature, match=f"consistency check at client {i}: client 0's signature"
        ):
            r.clients[i].unmask(everyone)
    # The honest server refuses the lying client's signature too.
    with pytest.raises(BadSignature, match="survivor-set signature of client 0"):
        r.server.receive_acknowledgement(acks[0])


def test_consistency_check_needs_t_valid_neighbour_signatures_and_stops_there() -> None:
    r = Round(7)  # complete graph: 6 neighbours each, t = 5
    t = r.params.threshold
    announcement = r.mask()
    acks = {c.index: c.acknowledge(announcement) for c in r.clients}
    genuine = {
        i: Acknowledgements.from_bytes(a, Acknowledgements.SINGLE).signatures[0][1]
        for i, a in acks.items()
    }
    forged = bytes(64)

    def signature_list(bad: set[int]) -> bytes:
        items = tuple((i, forged if i in bad else genuine[i]) for i in sorted(genuine))
        return Acknowledgements(Acknowledgements.LIST, 7, 0xFFFFFFFF, items).to_bytes()

    # Client 0 checks neighbours 1..t first: a forgery among them is refused by name ...
    with pytest.raises(BadSignature, match="consistency check at client 0: client 3's signature"):
        r.clients[0].unmask(signature_list({3}))
    # ... while one after the t-th neighbour adds nothing to the guarantee and is not checked.
    last = max(genuine)
    response = UnmaskResponse.from_bytes(r.clients[1].unmask(signature_list({last})))
    assert [v for v, _ in response.self_mask_shares] == [v for v in range(7) if v != 1]
    # Fewer than t neighbours' signatures: the client stays silent.
    short = Acknowledgements(
        Acknowledgements.LIST, 7, 0xFFFFFFFF, tuple((i, genuine[i]) for i in range(t - 1))
    ).to_bytes()
    with pytest.raises(TooManyDropouts, match="valid survivor-set signatures"):
        r.clients[2].unmask(short)


def test_an_honest_client_never_reveals_both_shares_of_a_peer() -> None:
    r = Round(6)
    announcement = r.mask()
    for c in r.clients:
        r.server.receive_acknowledgement(c.acknowledge(announcement))
    signatures = r.server.close_acknowledge()
    response = UnmaskResponse.from_bytes(r.clients[0].unmask(signatures))
    assert not {v for v, _ in response.self_mask_shares} & {v for v, _ in response.mask_key_shares}
    with pytest.raises(ReplayedMessage, match="already answered 'unmask'"):
        r.clients[0].unmask(signatures)
    both = UnmaskResponse(
        7, 0, response.self_mask_shares[:1], response.self_mask_shares[:1]
    ).to_bytes()
    with pytest.raises(MalformedInput, match="reveals both shares"):
        UnmaskResponse.from_bytes(both)


def test_client_that_signs_then_vanishes_is_still_summed() -> None:
    r = Round(7)
    announcement = r.mask()
    for c in r.clients:
        r.server.receive_acknowledgement(c.acknowledge(announcement))
    signatures = r.server.close_acknowledge()
    for c in r.clients[:-1]:  # client 6 never sends its unmask response
        r.server.receive_unmask(c.unmask(signatures))
    outcome = r.server.finish()
    assert outcome.included == tuple(range(7)) and outcome.dropped == {6: "unmask"}
    np.testing.assert_array_equal(outcome.total, plain_sum(r.inputs, range(7)))


# -- bad input ---------------------------------------------------------------------------


def test_secure_sum_refuses_wrong_dtype_and_length() -> None:
    good = random_vectors(4, 10, 3)
    with pytest.raises(MalformedInput, match="input 2 must be a 1-D uint32 array, got int64"):
        secure_sum(good[:2] + [good[2].astype(np.int64)] + good[3:])
    with pytest.raises(MalformedInput, match="input 1 has length 9, expected 10"):
        secure_sum([good[0], good[1][:9]] + good[2:])
    with pytest.raises(ConfigurationError, match="at least 3 clients"):
        secure_sum(good[:2])
    for bad in (1, 4):  # k = 3 neighbours: t must be in 2..3
        with pytest.raises(
            ConfigurationError,
            match=f"threshold {bad} must satisfy k/2 < t <= k .* choose t in 2..3",
        ):
            secure_sum(good, threshold=bad)


def test_server_refuses_bad_messages_and_the_round_still_completes() -> None:
    r = Round(6)
    adverts = [c.advertise() for c in r.clients]
    for data in adverts:
        r.server.receive_advertisement(data)
    # Replayed advertisement (same round, same sender).
    with pytest.raises(ReplayedMessage, match="second key advertisement from client 2"):
        r.server.receive_advertisement(adverts[2])
    with pytest.raises(MalformedInput, match="key advertisement: truncated"):
        r.server.receive_advertisement(adverts[2][:40])
    views = r.server.close_advertise()
    # Late: an advertisement after the stage closed.
    with pytest.raises(ReplayedMessage, match="arrived in stage 'share'"):
        r.server.receive_advertisement(adverts[2])
    bundles = {i: r.clients[i].share_keys(v) for i, v in views.items()}
    # Truncated and padded bundles.
    with pytest.raises(MalformedInput, match="share bundle: .*truncated"):
        r.server.receive_shares(bundles[0][:-5])
    with pytest.raises(MalformedInput, match="share bundle: 3 trailing bytes"):
        r.server.receive_shares(bundles[0] + b"xyz")
    # A bundle bound to another round.
    other_round = bundles[0][:5] + struct.pack(">Q", 8) + bundles[0][13:]
    with pytest.raises(ReplayedMessage, match="bound to round 8, this is round 7"):
        r.server.receive_shares(other_round)
    for data in bundles.values():
        r.server.receive_shares(data)
    with pytest.raises(ReplayedMessage, match="second share bundle from client 1"):
        r.server.receive_shares(bundles[1])
    deliveries = r.server.close_share()
    masked = {i: r.clients[i].mask_input(r.inputs[i], d) for i, d in deliveries.items()}
    # Wrong length inside a well-formed message.
    short = MaskedInput(7, 3, r.inputs[3][:5]).to_bytes()
    with pytest.raises(MalformedInput, match="masked input of client 3 has length 5, expected 8"):
        r.server.receive_masked_input(short)
    for data in masked.values():
        r.server.receive_masked_input(data)
    with pytest.raises(ReplayedMessage, match="second masked input from client 4"):
        r.server.receive_masked_input(masked[4])
    announcement = r.server.close_mask()
    for c in r.clients:
        r.server.receive_acknowledgement(c.acknowledge(announcement))
    signatures = r.server.close_acknowledge()
    for c in r.clients:
        r.server.receive_unmask(c.unmask(signatures))
    outcome = r.server.finish()
    np.testing.assert_array_equal(outcome.total, plain_sum(r.inputs, range(6)))


def test_advertisement_signed_by_the_wrong_key_is_refused() -> None:
    r = Round(5)
    advert = KeyAdvertisement.from_bytes(r.clients[1].advertise())
    forged = KeyAdvertisement(
        advert.round_id,
        advert.sender,
        advert.cipher_key,
        advert.mask_key,
        ka.sign(r.identities[2], advert.signed_bytes()),  # client 2 signs as client 1
    ).to_bytes()
    with pytest.raises(BadSignature, match="key advertisement of client 1"):
        r.server.receive_advertisement(forged)
    with pytest.raises(BadSignature, match="key advertisement of client 1"):
        r.clients[0].share_keys([forged])
    r.server.receive_advertisement(advert.to_bytes())  # the genuine one is still accepted


def test_tampered_or_misrouted_shares_are_refused_by_the_receiver() -> None:
    r = Round(5)
    deliveries = r.share()
    delivery = SealedShares.from_bytes(deliveries[0], SealedShares.DELIVERY)
    sender, sealed = delivery.items[0]
    flipped = sealed[:20] + bytes([sealed[20] ^ 1]) + sealed[21:]
    tampered = SealedShares(
        SealedShares.DELIVERY, 7, 0, ((sender, flipped),) + delivery.items[1:]
    ).to_bytes()
    with pytest.raises(BadSignature, match=f"shares from client {sender} to client 0: AES-GCM"):
        r.clients[0].mask_input(r.inputs[0], tampered)
    # A share sealed for client 1 handed to client 2 (relabelled) fails authentication.
    to_1 = SealedShares.from_bytes(deliveries[1], SealedShares.DELIVERY).items
    to_2 = SealedShares.from_bytes(deliveries[2], SealedShares.DELIVERY)
    swapped = dict(to_2.items)
    swapped[0] = dict(to_1)[0]
    relabelled = SealedShares(
        SealedShares.DELIVERY, 7, 2, tuple(sorted(swapped.items()))
    ).to_bytes()
    with pytest.raises(BadSignature, match="shares from client 0 to client 2"):
        r.clients[2].mask_input(r.inputs[2], relabelled)


def test_share_for_the_wrong_round_is_refused() -> None:
    r = Round(5, round_id=7)
    deliveries = r.share()
    replayed = SealedShares.from_bytes(deliveries[0], SealedShares.DELIVERY)
    # Round-9 header on round-7 ciphertexts: refused on the header (and the client, having
    # been sent a bad message, stops taking part)...
    with pytest.raises(ReplayedMessage, match="bound to round 9"):
        r.clients[0].mask_input(
            r.inputs[0], SealedShares(SealedShares.DELIVERY, 9, 0, replayed.items).to_bytes()
        )
    # ...and round-8 ciphertexts under a correct round-7 header fail AES-GCM: the key and
    # the associated data are bound to the round.
    later = Round(5, round_id=8)
    later.share()
    sealed_for_0 = dict(SealedShares.from_bytes(later.bundles[1], SealedShares.BUNDLE).items)[0]
    mixed = dict(SealedShares.from_bytes(deliveries[3], SealedShares.DELIVERY).items)
    mixed[1] = sealed_for_0
    with pytest.raises(BadSignature, match="shares from client 1 to client 3"):
        r.clients[3].mask_input(
            r.inputs[3],
            SealedShares(SealedShares.DELIVERY, 7, 3, tuple(sorted(mixed.items()))).to_bytes(),
        )


def test_client_refuses_wrong_input_dtype_and_length() -> None:
    r = Round(5)
    deliveries = r.share()
    with pytest.raises(MalformedInput, match="must be a 1-D uint32 array, got float64"):
        r.clients[0].mask_input(r.inputs[0].astype(np.float64), deliveries[0])
    r2 = Round(5)
    deliveries = r2.share()
    with pytest.raises(MalformedInput, match="has length 7, expected 8"):
        r2.clients[0].mask_input(r2.inputs[0][:7], deliveries[0])


# -- the neighbour graph -----------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(n=st.integers(3, 60), data=st.data())
def test_graph_is_symmetric_and_k_regular(n: int, data) -> None:
    k = data.draw(st.integers(2, n - 1))
    seed = data.draw(st.binary(min_size=16, max_size=32))
    graph = neighbour_graph(n, k, seed)
    assert graph == neighbour_graph(n, k, seed)  # derived from the public seed alone
    for u, peers in enumerate(graph):
        assert u not in peers
        assert all(u in graph[v] for v in peers)
    degrees = sorted(len(p) for p in graph)
    if k >= n - 1:
        assert degrees == [n - 1] * n
    elif k % 2 and n % 2:
        assert degrees == [k] * (n - 1) + [k + 1]  # no k-regular graph exists
    else:
        assert degrees == [k] * n


def test_graph_depends_on_the_round_seed() -> None:
    assert neighbour_graph(50, 13, b"a" * 16) != neighbour_graph(50, 13, b"b" * 16)


def test_default_threshold_rule() -> None:
    assert [default_threshold(k) for k in (2, 3, 9, 13, 49)] == [2, 3, 7, 9, 33]


# -- the AggregationProtocol plug-in and the auditor's path ------------------------------


def _protocol_round(drop=None):
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=10)
    rng = np.random.default_rng(5)
    updates = {f"client-{i}": rng.uniform(-1.2, 1.2, 30) for i in range(10)}
    protocol = MaskingProtocol(
        codec, neighbours=6, threshold=4
    )  # slack of two dropouts per neighbourhood
    result = protocol.aggregate(updates, round_id=3, round_seed=b"seed" * 8, drop=drop, rng=rng)
    return codec, updates, result


def test_masking_protocol_decodes_the_survivors_sum() -> None:
    codec, updates, result = _protocol_round(drop={"client-2": "mask", "client-5": "unmask"})
    assert result.protocol == "masking"
    assert "client-2" not in result.included and "client-5" in result.included
    assert result.dropped == ("client-2",)
    exact = sum(np.clip(updates[c], -1, 1) for c in result.included)
    assert np.all(np.abs(result.total - exact) <= len(result.included) * codec.step)
    import json

    transcript = json.loads(
        json.dumps(result.transcript)
    )  # JSON-serialisable, survives a round trip
    np.testing.assert_array_equal(
        recompute_from_submissions(transcript, result.submissions), result.total
    )
    np.testing.assert_array_equal(
        dispatch_recompute("masking", transcript, result.submissions), result.total
    )


def test_auditor_detects_tampering() -> None:
    _, _, result = _protocol_round(drop={"client-1": "share", "client-6": "mask"})
    name = result.included[0]
    tampered = dict(result.submissions)
    from safetensors.numpy import load

    vector = load(tampered[name])["masked"].copy()
    vector[0] += 1
    tampered[name] = save_safetensors({"masked": vector})
    with pytest.raises(AggregateMismatch, match="total_sha256"):
        recompute_from_submissions(result.transcript, tampered)

    missing = {k: v for k, v in result.submissions.items() if k != name}
    with pytest.raises(MalformedInput, match="survivors without a submission"):
        recompute_from_submissions(result.transcript, missing)

    bad_seed = copy.deepcopy(result.transcript)
    bad_seed["self_mask_seeds"][name] = os.urandom(16).hex()
    with pytest.raises(AggregateMismatch):
        recompute_from_submissions(bad_seed, result.submissions)

    bad_key = copy.deepcopy(result.transcript)
    bad_key["dropped_mask_keys"]["client-6"] = os.urandom(32).hex()
    with pytest.raises(AggregateMismatch, match="does not match its advertised public key"):
        recompute_from_submissions(bad_key, result.submissions)

    bad_sig = copy.deepcopy(result.transcript)
    advert = bad_sig["advertisements"]["client-3"]
    advert["mask_key"] = bad_sig["advertisements"]["client-4"]["mask_key"]
    with pytest.raises(BadSignature, match="transcript advertisement of 'client-3'"):
        recompute_from_submissions(bad_sig, result.submissions)

    not_blob = dict(result.submissions)
    not_blob[name] = b"not safetensors"
    with pytest.raises(MalformedInput, match=f"submission of {name!r}"):
        recompute_from_submissions(result.transcript, not_blob)


def test_masking_protocol_abort_names_clients() -> None:
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=5)
    updates = {f"c{i}": np.zeros(4) for i in range(5)}
    with pytest.raises(TooManyDropouts) as info:
        MaskingProtocol(codec).aggregate(
            updates,
            round_id=1,
            round_seed=b"x" * 16,
            drop={"c0": "mask", "c1": "mask", "c2": "mask"},
        )
    assert info.value.stage == "mask" and info.value.dropped == {
        "c0": "mask",
        "c1": "mask",
        "c2": "mask",
    }
    with pytest.raises(MalformedInput, match="not in the round"):
        MaskingProtocol(codec).aggregate(
            updates, round_id=1, round_seed=b"x" * 16, drop={"zz": "mask"}
        )
    with pytest.raises(ConfigurationError, match="max_summands"):
        MaskingProtocol(FixedPointCodec(clip=1.0, bits=16, max_summands=4)).aggregate(
            updates, round_id=1, round_seed=b"x" * 16
        )


def test_masking_protocol_uses_registered_identity_keys() -> None:
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=4)
    keys = {f"c{i}": Ed25519PrivateKey.generate() for i in range(4)}
    updates = {name: np.full(3, 0.25) for name in keys}
    result = MaskingProtocol(codec, identities=keys).aggregate(
        updates, round_id=2, round_seed=b"y" * 16
    )
    assert result.transcript["identity_keys"] == {
        n: ka.public_bytes(k).hex() for n, k in keys.items()
    }
    np.testing.assert_allclose(result.total, 1.0, atol=4 * codec.step)
    with pytest.raises(ConfigurationError, match=r"no identity key for clients \['c3'\]"):
        MaskingProtocol(codec, identities={n: keys[n] for n in ("c0", "c1", "c2")}).aggregate(
            updates, round_id=2, round_seed=b"y" * 16
        )


# -- self-mask seed commitments: binding the revealed b_u to what client u used -----------


def _claimed_total(result, victim: str, fake: bytes) -> np.ndarray:
    """The total a lying server would publish after swapping the victim's seed for ``fake``."""
    real = bytes.fromhex(result.transcript["self_mask_seeds"][victim])
    total = result.total.copy()
    MaskExpander().apply(total, add=[real], subtract=[fake])
    return total


def _forge_seed(result, victim: str, fake: bytes) -> dict:
    forged = copy.deepcopy(result.transcript)
    forged["self_mask_seeds"][victim] = fake.hex()
    total = _claimed_total(result, victim, fake)
    forged["total_sha256"] = hashlib.sha256(total.astype("<u4").tobytes()).hexdigest()
    return forged


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(4, 9), data=st.data())
def test_a_substituted_self_mask_seed_is_rejected_naming_the_client(n: int, data) -> None:
    neighbours = data.draw(st.one_of(st.none(), st.integers(3, n - 1)), label="neighbours")
    vectors = random_vectors(n, 16, n)
    result = secure_sum(
        vectors, neighbours=neighbours, seed=data.draw(st.integers(0, 2**64)), round_id=4
    )
    victim = data.draw(st.sampled_from(result.transcript["survivors"]), label="victim")
    fake = data.draw(st.binary(min_size=16, max_size=16), label="fake seed")
    assume(fake.hex() != result.transcript["self_mask_seeds"][victim])
    forged = _forge_seed(result, victim, fake)
    with pytest.raises(
        AggregateMismatch,
        match=f"self-mask seed of '{victim}' does not match its signed commitment",
    ):
        recompute_total(forged, result.masked_vectors)
    # Re-committing to the fake seed does not help: the client never signed that commitment.
    entry = forged["self_mask_commitments"][victim]
    entry["commitment"] = self_mask_commitment(4, int(victim), fake).hex()
    with pytest.raises(BadSignature, match=f"transcript self-mask commitment of '{victim}'"):
        recompute_total(forged, result.masked_vectors)
    # Nor does signing it with another client's key (the server knows no client's key).
    other = next(name for name in result.transcript["survivors"] if name != victim)
    entry["signature"] = forged["self_mask_commitments"][other]["signature"]
    with pytest.raises(BadSignature, match=f"transcript self-mask commitment of '{victim}'"):
        recompute_total(forged, result.masked_vectors)


def test_the_seed_swap_attack_is_real_without_the_commitment_check(monkeypatch) -> None:
    """Sanity check of the attack above: with the hash check patched out, the auditor
    reproduces the lying server's total; with it, the forgery is refused."""
    result = secure_sum(random_vectors(5, 12, 9), seed=1, round_id=4)
    fake = os.urandom(16)
    forged = _forge_seed(result, "2", fake)
    committed = bytes.fromhex(result.transcript["self_mask_commitments"]["2"]["commitment"])
    real_commit = masking_module.self_mask_commitment
    monkeypatch.setattr(
        masking_module,
        "self_mask_commitment",
        lambda r, i, seed: committed if seed == fake else real_commit(r, i, seed),
    )
    lie = recompute_total(forged, result.masked_vectors)
    np.testing.assert_array_equal(lie, _claimed_total(result, "2", fake))
    assert not np.array_equal(lie, result.total)
    monkeypatch.undo()
    with pytest.raises(AggregateMismatch, match="'2' does not match its signed commitment"):
        recompute_total(forged, result.masked_vectors)


def test_transcript_commitments_must_be_present_signed_and_well_formed() -> None:
    result = secure_sum(random_vectors(5, 6, 3), seed=2, round_id=4)
    np.testing.assert_array_equal(
        recompute_total(result.transcript, result.masked_vectors), result.total
    )
    missing = copy.deepcopy(result.transcript)
    del missing["self_mask_commitments"]["1"]
    with pytest.raises(MalformedInput, match="exactly the survivors' commitments"):
        recompute_total(missing, result.masked_vectors)
    unsigned = copy.deepcopy(result.transcript)
    unsigned["self_mask_commitments"]["1"]["signature"] = bytes(64).hex()
    with pytest.raises(BadSignature, match="transcript self-mask commitment of '1'"):
        recompute_total(unsigned, result.masked_vectors)
    swapped = copy.deepcopy(result.transcript)  # 0's genuine signed commitment passed off as 1's
    swapped["self_mask_commitments"]["1"] = swapped["self_mask_commitments"]["0"]
    with pytest.raises(BadSignature, match="transcript self-mask commitment of '1'"):
        recompute_total(swapped, result.masked_vectors)
    short = copy.deepcopy(result.transcript)
    short["self_mask_commitments"]["3"]["commitment"] = bytes(31).hex()
    with pytest.raises(MalformedInput, match="self-mask commitment of '3': expected 32 bytes"):
        recompute_total(short, result.masked_vectors)
    old = copy.deepcopy(result.transcript)
    old["version"] = 1
    with pytest.raises(MalformedInput, match="version 1"):
        recompute_total(old, result.masked_vectors)


def test_share_bundle_commitment_is_signed_bound_and_canonical() -> None:
    r = Round(5)
    views = r.advertise()
    bundles = {i: r.clients[i].share_keys(v) for i, v in views.items()}
    genuine = SealedShares.from_bytes(bundles[1], SealedShares.BUNDLE)
    assert len(genuine.commitment) == 32 and len(genuine.signature) == 64
    assert genuine.to_bytes() == bundles[1]  # one canonical encoding
    payload = commitment_payload(7, 1, genuine.commitment)
    forgeries = {
        "signed by client 2": replace(genuine, signature=ka.sign(r.identities[2], payload)),
        "unsigned": replace(genuine, signature=bytes(64)),
        "another commitment": replace(genuine, commitment=os.urandom(32)),
        "signed for round 8": replace(
            genuine,
            signature=ka.sign(r.identities[1], commitment_payload(8, 1, genuine.commitment)),
        ),
        "signed for client 0": replace(
            genuine,
            signature=ka.sign(r.identities[1], commitment_payload(7, 0, genuine.commitment)),
        ),
    }
    for forged in forgeries.values():
        with pytest.raises(BadSignature, match="self-mask commitment of client 1"):
            r.server.receive_shares(forged.to_bytes())
    with pytest.raises(MalformedInput, match="share bundle: truncated"):
        r.server.receive_shares(bundles[1][:-65])  # commitment cut short
    with pytest.raises(MalformedInput, match="32-byte commitment"):
        replace(genuine, commitment=genuine.commitment[:31]).to_bytes()
    with pytest.raises(MalformedInput, match="share delivery carries no commitment"):
        SealedShares(
            SealedShares.DELIVERY, 7, 0, (), genuine.commitment, genuine.signature
        ).to_bytes()
    for data in bundles.values():  # refused forgeries left no trace: the genuine bundles pass
        r.server.receive_shares(data)
    deliveries = r.server.close_share()
    assert all(
        not SealedShares.from_bytes(d, SealedShares.DELIVERY).commitment
        for d in deliveries.values()
    )


def _round_with_bad_shares(
    n: int, neighbours: int | None, bad: dict[int, int], owner: int, *, drop_mask=()
):
    """Run a round in which each holder w in ``bad`` shifts its revealed share of ``owner``.

    The shift is crafted (delta times the inverse of w's Lagrange coefficient in the
    server's first reconstruction), so the reconstructed secret moves by exactly delta and
    still has the width of a seed: only the commitment check can catch it.
    """
    r = Round(n, neighbours=neighbours)
    deliveries = r.share()
    for i, d in deliveries.items():
        if i not in drop_mask:
            r.server.receive_masked_input(r.clients[i].mask_input(r.inputs[i], d))
    announcement = r.server.close_mask()
    for i in sorted(r.server.survivors):
        r.server.receive_acknowledgement(r.clients[i].acknowledge(announcement))
    signatures = r.server.close_acknowledge()
    t = r.params.threshold
    xs = tuple(sorted(w + 1 for w in r.params.graph[owner] if w in r.server.acknowledged))
    used = xs[:t]
    for i in sorted(r.server.acknowledged):
        data = r.clients[i].unmask(signatures)
        if i in bad:
            response = UnmaskResponse.from_bytes(data)
            subset = used if i + 1 in used else used[:-1] + (i + 1,)
            lam = shamir.lagrange_at_zero(tuple(sorted(subset)))[sorted(subset).index(i + 1)]
            shift = bad[i] * pow(lam, -1, shamir.PRIME)

            def moved(items, shift=shift):
                return tuple(
                    (v, shamir.encode_share((shamir.decode_share(s) + shift) % shamir.PRIME))
                    if v == owner
                    else (v, s)
                    for v, s in items
                )

            data = replace(
                response,
                self_mask_shares=moved(response.self_mask_shares),
                mask_key_shares=moved(response.mask_key_shares),
            ).to_bytes()
        r.server.receive_unmask(data)
    return r, used


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(6, 10), data=st.data())
def test_a_bad_share_of_a_self_mask_seed_is_skipped_or_named(n: int, data) -> None:
    neighbours = data.draw(st.one_of(st.none(), st.integers(5, n - 1)), label="neighbours")
    k = n - 1 if neighbours is None else neighbours
    params = MaskingParams.create(
        round_id=7,
        round_seed=b"r" * 32,
        clients=[f"c{i}" for i in range(n)],
        length=8,
        neighbours=neighbours,
    )
    owner = data.draw(st.integers(0, n - 1), label="owner")
    holders = sorted(params.graph[owner])
    slack = len(holders) - params.threshold
    count = data.draw(st.integers(1, slack + 1), label="bad holders")
    cheats = data.draw(
        st.lists(st.sampled_from(holders), min_size=count, max_size=count, unique=True)
    )
    bad = {w: data.draw(st.integers(1, 2**64), label=f"delta of {w}") for w in cheats}
    r, used = _round_with_bad_shares(n, neighbours, bad, owner)
    assert k >= params.threshold
    if count > slack:  # fewer than t honest shares: the round aborts naming the owner...
        try:
            outcome = r.server.finish()
        except BadShare as exc:
            assert f"self-mask seed of client 'c{owner}' does not match" in str(exc)
            assert exc.client == f"c{owner}"
            return
        # ...unless the cheats' errors cancel in the Lagrange sum of some t shares (e.g.
        # deltas 2 and 1 against coefficients -1/2 and 1), which then yields the true
        # seed: the commitment check passes and the total must be exact.
        np.testing.assert_array_equal(outcome.total, plain_sum(r.inputs, range(n)))
        return
    outcome = r.server.finish()
    np.testing.assert_array_equal(outcome.total, plain_sum(r.inputs, range(n)))
    np.testing.assert_array_equal(
        recompute_total(outcome.transcript, {f"c{i}": v for i, v in outcome.masked.items()}),
        outcome.total,
    )
    named = set(outcome.bad_shares.get(owner, ()))
    if {w + 1 for w in bad} & set(used):  # the first reconstruction failed: all cheats named
        assert named == set(bad)
    else:  # the bad shares were never needed
        assert named == set()


def test_a_bad_share_with_no_spare_share_aborts_naming_the_client() -> None:
    # Complete graph of 4: k = 3, t = 3, no spare share of anyone's seed.
    r, _ = _round_with_bad_shares(4, None, {1: 5}, 0)
    with pytest.raises(
        BadShare, match="self-mask seed of client 'c0' does not match its signed commitment"
    ):
        r.server.finish()


def test_a_bad_share_of_a_dropped_mask_key_is_skipped() -> None:
    # Client 0 drops before masking; holder 1 shifts its revealed share of s_0.
    r, used = _round_with_bad_shares(8, None, {1: 1}, 0, drop_mask=(0,))
    assert 2 in used
    outcome = r.server.finish()
    assert outcome.included == tuple(range(1, 8))
    np.testing.assert_array_equal(outcome.total, plain_sum(r.inputs, range(1, 8)))
    assert outcome.bad_shares == {0: (1,)}
    np.testing.assert_array_equal(
        recompute_total(outcome.transcript, {f"c{i}": v for i, v in outcome.masked.items()}),
        outcome.total,
    )


def test_libsodium_round_keys_and_signer_give_the_openssl_bytes() -> None:
    """X25519Key and Signer (libsodium) against cryptography's objects (OpenSSL): same
    public keys, shared secrets, mask seeds and signatures, so no message changes."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    for _ in range(20):
        ours, peer = ka.X25519Key.generate(), X25519PrivateKey.generate()
        openssl = ka.x25519_private_from_bytes(ours.private, what="test")
        assert ka.private_bytes(openssl) == ka.private_bytes(ours) == ours.private
        assert ka.public_bytes(openssl) == ka.public_bytes(ours)
        peer_public = ka.public_bytes(peer)
        assert ka.agree(ours, peer_public, what="t") == ka.agree(openssl, peer_public, what="t")
        assert ka.mask_seed(ours, peer_public, round_id=3, a=1, b=2) == ka.mask_seed(
            openssl, peer_public, round_id=3, a=2, b=1
        )
        unclamped = os.urandom(32)  # clamped on the way in, as OpenSSL does
        assert ka.X25519Key(unclamped).public == ka.public_bytes(
            ka.x25519_private_from_bytes(unclamped, what="test")
        )
        identity = Ed25519PrivateKey.generate()
        message = os.urandom(50)
        assert ka.Signer(identity).sign(message) == ka.sign(identity, message)
    key = ka.X25519Key.generate()
    for low_order in (bytes(32), (1).to_bytes(32, "little")):
        with pytest.raises(MalformedInput, match="key agreement refused"):
            ka.agree(key, low_order, what="low order")
    with pytest.raises(MalformedInput, match="32 bytes"):
        ka.agree(key, bytes(31), what="short")
    with pytest.raises(MalformedInput):
        ka.X25519Key(bytes(31))
