"""Secure aggregation by pairwise masking: SecAgg and SecAgg+, robust to dropouts.

Protocol: Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving Machine
Learning", CCS 2017 (Fig. 4, the malicious-server variant with the consistency check),
over the sparse neighbour graph of Bell et al., "Secure Single-Server Aggregation with
(Poly)Logarithmic Overhead", CCS 2020 (SecAgg+). The aggregator learns only the sum.

Stages (a client may stop answering after any of them):

1. ``advertise`` — client u sends two X25519 public keys (C_u for share encryption, S_u
   for masks), signed with its Ed25519 identity key. Survivors: U1.
2. ``share`` — u picks a fresh self-mask seed b_u, Shamir-shares b_u and its mask private
   key s_u among its neighbours in U1 (threshold t) and sends each share AES-GCM-sealed
   under k_u→v. The same bundle carries u's commitment to its seed,
   c_u = SHA-256("bfl-private/secagg/v1/self-mask-commitment" ‖ round ‖ u ‖ b_u), signed
   with u's identity key together with the round and u's index; the server verifies the
   signature on receipt and keeps (c_u, signature). Survivors: U2.
3. ``mask`` — u sends y_u = x_u + PRG(b_u) + Σ_{v∈N(u)∩U2, v>u} PRG(s_uv)
   − Σ_{v∈N(u)∩U2, v<u} PRG(s_uv)  (mod 2^32). Survivors: U3, whose inputs are summed.
4. ``unmask`` — the server announces U3; each client signs it (consistency check) and,
   once it holds t valid signatures of its neighbours over the *same* U3 (it checks
   neighbours' signatures in the server's list until t have verified, and refuses the
   list if one of those it checks fails; Bonawitz checks every signature, but t
   agreeing neighbours are the whole guarantee, and in SecAgg+ the neighbours are the
   parties whose views decide which share of each peer is revealed), reveals for each neighbour v either
   v's b-share (v ∈ U3) or v's s-share (v ∈ U2 \\ U3), never both. The server
   reconstructs b_v for v ∈ U3 and s_v for v ∈ U2 \\ U3, checks each b_v against v's
   signed commitment c_v and each s_v against v's advertised public key S_v, and removes
   the masks. A secret that fails its check means a bad share (a share holder, or the
   owner itself, cheated): the server retries other t-subsets of the shares it holds
   (while more than t arrived, up to a bounded number of subsets), names the holders
   whose shares disagree with the passing subset (:attr:`MaskingOutcome.bad_shares`;
   a bad share never used is not noticed, nor needed) and goes on with the exact sum,
   or aborts with :class:`BadShare` naming the owner when no subset passes.

Graph and threshold rule. ``neighbours=None`` is the complete graph (SecAgg, k = N-1).
Otherwise every client has k neighbours on a Harary graph H(k, N) laid on a ring in the
order of a permutation derived from the public round seed with SHA-256 (so the graph is
random, public and recomputable; when k and N are both odd no k-regular graph exists and
one client gets k+1). k >= N-1 means the complete graph. The default threshold is
t = floor(2k/3) + 1 and any t with k/2 < t <= k (and t >= 2) is accepted: t > k/2 means
two disjoint groups of honest neighbours can never each reach t, so together with the
consistency check the server cannot learn both b_v and s_v unless more than 2t - k of
v's neighbours collude with it; t <= 2k/3 + 1 leaves about a third of each neighbourhood
free to drop out. Bell et al. take k = O(log N) (e.g. k = 13 for N = 50).

Dropouts. A client with fewer than t live neighbours cannot be unmasked, so the server
prunes such clients after ``advertise`` and ``share``; after ``mask`` and during
``unmask`` it aborts with :class:`TooManyDropouts` (stage and counts) when a survivor set
is smaller than t or some needed secret has fewer than t shares.

Public recomputation. ``MaskingServer.finish`` returns the unmasking transcript (a JSON
object: parameters, graph seed, identity keys, signed key advertisements, the survivors'
signed self-mask seed commitments, revealed self-mask seeds of survivors, revealed mask
keys of dropped clients, survivor and dropout sets, SHA-256 of the total).
:func:`recompute_total` re-derives the total bit for bit from it and the masked vectors,
after checking every advertisement and commitment signature under the client's identity
key, that every revealed seed hashes to its owner's commitment and that every revealed
mask key matches its advertised public key; so neither the server nor a share holder can
substitute a seed or key without the auditor noticing (the transcript's ``identity_keys``
are themselves the server's claim: an auditor compares them with the registered keys).
Transcript version 2 added ``self_mask_commitments`` (name -> commitment, signature);
version-1 transcripts, which lack them, are refused. The server uses the very same
unmasking routine.

Modules: :mod:`.masking_graph` (parameters, graph), :mod:`.masking_messages` (typed
messages and their canonical encoding), :mod:`.keyagreement`, :mod:`.shamir`,
:mod:`.prg`; this module holds the parties, the runner and the auditor's path.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import os
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from safetensors.numpy import save as save_safetensors

from . import keyagreement as ka
from . import shamir
from .base import (
    STAGES,
    AggregationProtocol,
    AggregationResult,
    ForgedInput,
    Stage,
    check_forged,
    check_updates,
    decode_or_refuse,
    load_submission_tensors,
)
from .errors import (
    AggregateMismatch,
    BadShare,
    ConfigurationError,
    MalformedInput,
    ProtocolError,
    ReplayedMessage,
    RoundAbort,
    TooManyDropouts,
)
from .masking_graph import MaskingParams
from .masking_messages import (
    COMMITMENT_BYTES,
    SERVER,
    Acknowledgements,
    KeyAdvertisement,
    MaskedInput,
    SealedShares,
    SurvivorSet,
    UnmaskResponse,
    check_round,
    commitment_payload,
    self_mask_commitment,
    share_associated_data,
    survivor_payload,
)
from .prg import SEED_BYTES, MaskExpander
from .quantize import Codec, codec_from_json
from .records import exact_fields, hex_bytes, integer, keyed, text, texts

PROTOCOL = "masking"
TRANSCRIPT_VERSION = 2
"""2: survivors' signed self-mask seed commitments (``self_mask_commitments``)."""

# ---------------------------------------------------------------------------------------
# Unmasking: shared by the server and by the public recomputation.


def _remove_masks(
    params: MaskingParams,
    total: np.ndarray,
    *,
    self_mask_seeds: Mapping[int, bytes],
    dropped_mask_keys: Mapping[int, X25519PrivateKey | ka.X25519Key],
    mask_public_keys: Mapping[int, bytes],
    shared: frozenset[int],
    survivors: frozenset[int],
    expander: MaskExpander,
) -> None:
    """Subtract PRG(b_u) of survivors and the dangling pairwise masks of dropped clients."""
    add: list[bytes] = []
    subtract = [self_mask_seeds[u] for u in sorted(survivors)]
    for v in sorted(dropped_mask_keys):
        for u in params.graph[v]:
            if u in survivors and u in shared:
                seed = ka.mask_seed(
                    dropped_mask_keys[v], mask_public_keys[u], round_id=params.round_id, a=u, b=v
                )
                # y_u carries +PRG(s_uv) when v > u and -PRG(s_uv) when v < u.
                (subtract if v > u else add).append(seed)
    expander.apply(total, add=add, subtract=subtract)


def total_digest(total: np.ndarray) -> str:
    """SHA-256 (hex) of the total as little-endian uint32 words, hashed in place."""
    return hashlib.sha256(np.ascontiguousarray(total, dtype="<u4")).hexdigest()


_SUBSET_TRIES = 1024
"""Most t-subsets of the shares the server tries for one secret that failed its check."""


def _reconstruct_checked(
    shares: Mapping[int, int],
    *,
    threshold: int,
    secret_bytes: int,
    valid: Callable[[bytes], bool],
    coefficients: Mapping[tuple[int, ...], tuple[int, ...]] | None = None,
) -> tuple[bytes, tuple[int, ...]] | None:
    """Recover a secret that passes ``valid`` from shares of which some may be bad.

    Tries the ``threshold`` smallest abscissas first (the honest case: one combine),
    then t-subsets leaving out 1, 2, ... of the shares, up to :data:`_SUBSET_TRIES`.
    Returns the secret and the abscissas whose shares disagree with it (a share off the
    polynomial moves the interpolated secret, since every Lagrange coefficient at 0 is
    non-zero), or None when no subset tried passes.
    """
    xs = sorted(shares)

    def attempt(subset: Sequence[int]) -> bytes | None:
        try:
            secret = shamir.combine(
                {x: shares[x] for x in subset},
                threshold=threshold,
                secret_bytes=secret_bytes,
                coefficients=coefficients,
            )
        except MalformedInput:  # interpolates to a value wider than the secret
            return None
        return secret if valid(secret) else None

    secret = attempt(xs[:threshold])
    if secret is not None:
        return secret, ()
    tries = 1
    for left_out in range(1, len(xs) - threshold + 1):
        # Leaving out e of the t + e smallest abscissas gives every distinct t-subset once.
        window = xs[: threshold + left_out]
        for excluded in itertools.combinations(window, left_out):
            if tries >= _SUBSET_TRIES:
                return None
            tries += 1
            subset = [x for x in window if x not in excluded]
            secret = attempt(subset)
            if secret is not None:
                bad = tuple(x for x in xs if x not in subset and attempt(subset[1:] + [x]) is None)
                return secret, bad
    return None


# ---------------------------------------------------------------------------------------
# Parties


class MaskingClient:
    """One client's side of the protocol; each method answers one stage, once."""

    def __init__(
        self,
        index: int,
        params: MaskingParams,
        *,
        identity: Ed25519PrivateKey,
        identity_keys: Sequence[bytes],
    ) -> None:
        self.index = index
        self.params = params
        self._identity = identity
        self._signer = ka.Signer(identity)
        self._identity_keys = tuple(identity_keys)
        self._cipher_key = ka.X25519Key.generate()
        self._mask_key = ka.X25519Key.generate()
        self._neighbours = frozenset(params.graph[index])
        self._adverts: dict[int, KeyAdvertisement] = {}
        self._cipher_secrets: dict[int, bytes] = {}
        self._peer_shares: dict[int, tuple[int, int]] = {}
        self._self_seed: bytes | None = None
        self._survivors: np.ndarray | None = None
        self._survivor_payload = b""
        self._surviving_peers: frozenset[int] = frozenset()
        self._done: set[str] = set()
        self._expander = MaskExpander()

    def _once(self, step: str) -> None:
        if step in self._done:
            raise ReplayedMessage(
                f"client {self.index} already answered {step!r} in round {self.params.round_id}"
            )
        self._done.add(step)

    def advertise(self) -> bytes:
        self._once("advertise")
        return signed_advertisement(self._signer, round_id=self.params.round_id, sender=self.index,
                                    cipher_key=self._cipher_key, mask_key=self._mask_key)

    def share_keys(self, advertisements: Sequence[bytes]) -> bytes:
        """Verify the neighbours' advertisements and send them sealed shares of b_u and s_u."""
        self._once("share")
        for data in advertisements:
            advert = _verify_advertisement(self.params, self._identity_keys, data)
            if advert.sender not in self._neighbours:
                raise MalformedInput(
                    f"client {self.index} got the advertisement of non-neighbour {advert.sender}"
                )
            if advert.sender in self._adverts:
                raise ReplayedMessage(
                    f"client {self.index} got two advertisements of client {advert.sender}"
                )
            self._adverts[advert.sender] = advert
        peers = sorted(self._adverts)
        self._require(len(peers), "share", "neighbours advertised keys")
        self._self_seed = os.urandom(SEED_BYTES)
        xs = tuple(p + 1 for p in peers)
        b_shares, s_shares = shamir.split_many(
            [self._self_seed, ka.private_bytes(self._mask_key)],
            threshold=self.params.threshold,
            xs=xs,
        )
        items = []
        for peer, x in zip(peers, xs):
            self._cipher_secrets[peer] = ka.agree(
                self._cipher_key,
                self._adverts[peer].cipher_key,
                what=f"cipher key of client {peer}",
            )
            key = ka.share_key(
                self._cipher_secrets[peer],
                round_id=self.params.round_id,
                sender=self.index,
                receiver=peer,
            )
            plaintext = (
                struct.pack(">II", self.index, peer)
                + shamir.encode_share(b_shares[x])
                + shamir.encode_share(s_shares[x])
            )
            items.append(
                (
                    peer,
                    ka.seal(
                        key,
                        plaintext,
                        share_associated_data(self.params.round_id, self.index, peer),
                    ),
                )
            )
        commitment = self_mask_commitment(self.params.round_id, self.index, self._self_seed)
        signature = self._signer.sign(
            commitment_payload(self.params.round_id, self.index, commitment)
        )
        return SealedShares(
            SealedShares.BUNDLE,
            self.params.round_id,
            self.index,
            tuple(items),
            commitment,
            signature,
        ).to_bytes()

    def mask_input(self, vector: np.ndarray, delivery: bytes) -> memoryview:
        """Open the neighbours' shares and return the masked input message (bytes-like)."""
        self._once("mask")
        if not isinstance(vector, np.ndarray) or vector.dtype != np.uint32 or vector.ndim != 1:
            raise MalformedInput(
                f"input of client {self.index} must be a 1-D uint32 array, got {getattr(vector, 'dtype', type(vector))}"
            )
        if vector.shape[0] != self.params.length:
            raise MalformedInput(
                f"input of client {self.index} has length {vector.shape[0]}, expected {self.params.length}"
            )
        message = SealedShares.from_bytes(delivery, SealedShares.DELIVERY)
        check_round(self.params, message.round_id, f"share delivery to client {self.index}")
        if message.party != self.index:
            raise MalformedInput(
                f"share delivery addressed to client {message.party} reached client {self.index}"
            )
        for sender, sealed in message.items:
            if sender not in self._adverts:
                raise MalformedInput(
                    f"client {self.index} got shares from {sender}, which is not an advertised neighbour"
                )
            what = f"shares from client {sender} to client {self.index}"
            key = ka.share_key(
                self._cipher_secrets[sender],
                round_id=self.params.round_id,
                sender=sender,
                receiver=self.index,
            )
            plaintext = ka.open_sealed(
                key,
                sealed,
                share_associated_data(self.params.round_id, sender, self.index),
                what=what,
            )
            if struct.unpack(">II", plaintext[:8]) != (sender, self.index):
                raise MalformedInput(f"{what}: sealed payload names another sender or receiver")
            b_share = shamir.decode_share(plaintext[8 : 8 + shamir.SHARE_BYTES])
            s_share = shamir.decode_share(plaintext[8 + shamir.SHARE_BYTES :])
            self._peer_shares[sender] = (b_share, s_share)
        self._require(len(self._peer_shares), "mask", "neighbours delivered shares")
        if self._self_seed is None:
            raise MalformedInput(f"client {self.index} was asked to mask before it shared its keys")
        add: list[bytes] = [self._self_seed]
        subtract: list[bytes] = []
        for peer in sorted(self._peer_shares):
            seed = ka.mask_seed(
                self._mask_key,
                self._adverts[peer].mask_key,
                round_id=self.params.round_id,
                a=self.index,
                b=peer,
            )
            (add if peer > self.index else subtract).append(seed)
        frame, masked = MaskedInput.frame(self.params.round_id, self.index, self.params.length)
        masked[:] = vector
        self._expander.apply(masked, add=add, subtract=subtract)
        return frame

    def acknowledge(self, survivor_set: bytes) -> bytes:
        """Consistency check, part 1: sign the survivor set the server announced."""
        self._once("acknowledge")
        # U3 has N entries and every client reads it: parse and search it with numpy, so
        # the client's own work stays O(k log N) in Python (no set of N built per client).
        round_id, survivors = SurvivorSet.decode(survivor_set)
        check_round(self.params, round_id, "survivor set")
        if not _contains(survivors, np.array([self.index]))[0]:
            raise MalformedInput(f"survivor set sent to client {self.index} does not contain it")
        self._require(len(survivors), "unmask", "survivors announced")
        self.accept_survivors(survivors)
        signature = self._signer.sign(self._survivor_payload)
        return Acknowledgements(
            Acknowledgements.SINGLE, self.params.round_id, self.index, ((self.index, signature),)
        ).to_bytes()

    def accept_survivors(self, survivors: np.ndarray) -> None:
        """Hold the sorted survivor set ``survivors`` (int64 ids containing this client) and
        what derives from it: the surviving neighbours and the payload every survivor signs.
        Also how a saved client (:mod:`bfl_private.rounds.masking_state`) is restored."""
        neighbours = np.array(self.params.graph[self.index], dtype=np.int64)
        surviving = frozenset(neighbours[_contains(survivors, neighbours)].tolist())
        if not surviving <= self._peer_shares.keys():
            raise MalformedInput(
                f"survivor set names neighbours of client {self.index} that never shared keys"
            )
        self._survivors = survivors
        self._surviving_peers = surviving
        self._survivor_payload = survivor_payload(self.params.round_id, survivors)

    def unmask(self, signature_list: bytes) -> bytes:
        """Consistency check, part 2, then reveal one share per neighbour (never both)."""
        if self._survivors is None:
            raise MalformedInput(
                f"client {self.index} was asked to unmask before acknowledging a survivor set"
            )
        self._once("unmask")
        round_id, _, signatures = Acknowledgements.decode(signature_list, Acknowledgements.LIST)
        check_round(self.params, round_id, "signature list")
        outsiders = signatures.ids[~_contains(self._survivors, signatures.ids)]
        if outsiders.size:
            raise MalformedInput(
                f"signature list holds a signature of {int(outsiders[0])}, which is not a survivor"
            )
        # Only neighbours' views decide which of our shares we reveal, and t of them
        # agreeing is the whole guarantee: checking more would cost without adding to it.
        # The neighbours' signatures are found by binary search, in increasing order.
        verified = 0
        for signer in self.params.graph[self.index]:
            if verified >= self.params.threshold:
                break
            position = signatures.find(signer)
            if position is None:
                continue
            ka.verify(
                self._identity_keys[signer],
                signatures.entry(position),
                self._survivor_payload,
                what=f"consistency check at client {self.index}: client {signer}'s signature over the survivor set",
            )
            verified += 1
        self._require(verified, "unmask", "neighbours' valid survivor-set signatures")
        survivors = self._surviving_peers
        b_shares = tuple(
            (p, shamir.encode_share(s[0]))
            for p, s in sorted(self._peer_shares.items())
            if p in survivors
        )
        s_shares = tuple(
            (p, shamir.encode_share(s[1]))
            for p, s in sorted(self._peer_shares.items())
            if p not in survivors
        )
        return UnmaskResponse(self.params.round_id, self.index, b_shares, s_shares).to_bytes()

    def _require(self, count: int, stage: str, what: str) -> None:
        if count < self.params.threshold:
            raise TooManyDropouts(
                f"client {self.index} refuses to continue at stage {stage!r}: {count} {what}, threshold {self.params.threshold}",
                stage=stage,
                required=self.params.threshold,
                available=count,
            )


def _contains(sorted_ids: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Which of ``values`` are in the sorted array ``sorted_ids`` (binary search, no set)."""
    if sorted_ids.size == 0:
        return np.zeros(values.shape, dtype=bool)
    positions = np.minimum(np.searchsorted(sorted_ids, values), sorted_ids.size - 1)
    return sorted_ids[positions] == values


def signed_advertisement(signer: ka.Signer, *, round_id: int, sender: int, cipher_key: ka.X25519Key,
                         mask_key: ka.X25519Key) -> bytes:
    """Stage 1's message: ``sender``'s two public keys for ``round_id``, signed. It names no
    graph and no seed, so a client may make it before the round opens (keys made ahead,
    fresh for that one round); Ed25519 is deterministic, so the same keys give the same bytes."""
    unsigned = KeyAdvertisement(round_id, sender, ka.public_bytes(cipher_key), ka.public_bytes(mask_key), b"")
    return replace(unsigned, signature=signer.sign(unsigned.signed_bytes())).to_bytes()


def _verify_advertisement(
    params: MaskingParams, identity_keys: Sequence[bytes], data: bytes
) -> KeyAdvertisement:
    advert = KeyAdvertisement.from_bytes(data)
    check_round(params, advert.round_id, f"key advertisement of client {advert.sender}")
    if advert.sender >= len(params.clients):
        raise MalformedInput(f"key advertisement from unknown client {advert.sender}")
    ka.verify(
        identity_keys[advert.sender],
        advert.signature,
        advert.signed_bytes(),
        what=f"key advertisement of client {advert.sender}",
    )
    return advert


@dataclass(frozen=True)
class MaskingOutcome:
    """What the server ends a successful round with."""

    total: np.ndarray
    """uint32 sum (mod 2^32) of the survivors' inputs."""
    included: tuple[int, ...]
    dropped: Mapping[int, Stage]
    transcript: dict[str, Any]
    masked: Mapping[int, np.ndarray] = field(repr=False)
    """Every survivor's masked vector as received: the round's public submissions."""
    bad_shares: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    """Owner of a secret -> share holders whose revealed share of it was bad (skipped)."""
    rejected: Mapping[int, str] = field(default_factory=dict)
    """Clients whose masked input was refused on receipt, with the reason (not summed)."""


class MaskingServer:
    """The aggregator: routes messages, checks them on receipt, and unmasks the sum.

    A refused message raises a named error and leaves the server's state untouched, so
    the round goes on with the other clients' messages.
    """

    def __init__(self, params: MaskingParams, *, identity_keys: Sequence[bytes]) -> None:
        if len(identity_keys) != len(params.clients):
            raise ConfigurationError(
                f"{len(identity_keys)} identity keys for {len(params.clients)} clients"
            )
        self.params = params
        self.identity_keys = tuple(identity_keys)
        self.stage: str = "advertise"
        self.adverts: dict[int, KeyAdvertisement] = {}
        self._advert_bytes: dict[int, bytes] = {}
        self._survivor_payload = b""
        self.advertised: frozenset[int] = frozenset()
        self._bundles: dict[int, SealedShares] = {}
        self.bad_shares: dict[int, tuple[int, ...]] = {}
        self.shared: frozenset[int] = frozenset()
        self._masked: dict[int, np.ndarray] = {}
        self._total = np.zeros(params.length, dtype=np.uint32)
        self.survivors: frozenset[int] = frozenset()
        self._acks: dict[int, bytes] = {}
        self.acknowledged: frozenset[int] = frozenset()
        self._responses: dict[int, UnmaskResponse] = {}
        self._expander = MaskExpander()

    # -- bookkeeping -------------------------------------------------------------------

    def _expect(self, stage: str, what: str) -> None:
        if self.stage != stage:
            raise ReplayedMessage(
                f"{what} arrived in stage {self.stage!r}; it belongs to stage {stage!r}"
            )

    def _admit(
        self, sender: int, allowed: frozenset[int] | range, seen: Mapping[int, Any], what: str
    ) -> None:
        if sender not in allowed:
            raise MalformedInput(
                f"{what} from client {sender}, which is not a participant of this stage"
            )
        if sender in seen:
            raise ReplayedMessage(
                f"second {what} from client {sender} in round {self.params.round_id}"
            )

    def dropped(self) -> dict[int, Stage]:
        """Each client that stopped counting, with the stage from which it did.

        Pruned clients (too few live neighbours) count as dropped at the stage whose
        closing pruned them; a client dropped at ``unmask`` is still in the total.
        """
        order = ("advertise", "share", "mask", "acknowledge", "unmask", "done")
        position = order.index(self.stage)
        checkpoints: tuple[tuple[Stage, frozenset[int], bool], ...] = (
            ("advertise", self.advertised, position > 0),
            ("share", self.shared, position > 1),
            ("mask", self.survivors, position > 2),
            ("unmask", self.acknowledged, position > 3),
            ("unmask", frozenset(self._responses), position > 4),
        )
        out: dict[int, Stage] = {}
        for i in range(len(self.params.clients)):
            for stage, members, closed in checkpoints:
                if closed and i not in members:
                    out[i] = stage
                    break
        return out

    def _abort(self, stage: Stage, count: int, what: str) -> TooManyDropouts:
        names = self.params.clients
        return TooManyDropouts(
            f"round {self.params.round_id} aborted at stage {stage!r}: {what} {count}, threshold "
            f"{self.params.threshold} ({len(names)} clients)",
            stage=stage,
            required=self.params.threshold,
            available=count,
            dropped={names[i]: s for i, s in self.dropped().items()},
        )

    def _prune(self, members: set[int]) -> frozenset[int]:
        """Remove, until none is left, clients with fewer than t live neighbours.

        Their secrets could never be reconstructed, so they are dropped now rather than
        sinking the round at the unmask stage.
        """
        while True:
            weak = {
                u
                for u in members
                if len(members.intersection(self.params.graph[u])) < self.params.threshold
            }
            if not weak:
                return frozenset(members)
            members -= weak

    def _check_live(self, stage: Stage, members: frozenset[int]) -> None:
        # A non-empty pruned set has at least t + 1 members; an empty one cannot go on.
        if len(members) < self.params.threshold + 1:
            raise self._abort(stage, len(members), "clients with at least t live neighbours")

    # -- stage 1 -----------------------------------------------------------------------

    def receive_advertisement(self, data: bytes) -> None:
        self._expect("advertise", "key advertisement")
        advert = _verify_advertisement(self.params, self.identity_keys, data)
        self._admit(
            advert.sender, range(len(self.params.clients)), self.adverts, "key advertisement"
        )
        self.adverts[advert.sender] = advert
        self._advert_bytes[advert.sender] = advert.to_bytes()

    def close_advertise(self) -> dict[int, list[bytes]]:
        """U1, pruned; returns for each member its live neighbours' advertisements."""
        self._expect("advertise", "closing the advertise stage")
        self.advertised = self._prune(set(self.adverts))
        self.stage = "share"
        self._check_live("advertise", self.advertised)
        return {
            u: [self._advert_bytes[v] for v in self.params.graph[u] if v in self.advertised]
            for u in sorted(self.advertised)
        }

    # -- stage 2 -----------------------------------------------------------------------

    def receive_shares(self, data: bytes) -> None:
        self._expect("share", "share bundle")
        bundle = SealedShares.from_bytes(data, SealedShares.BUNDLE)
        check_round(self.params, bundle.round_id, f"share bundle of client {bundle.party}")
        self._admit(bundle.party, self.advertised, self._bundles, "share bundle")
        expected = [v for v in self.params.graph[bundle.party] if v in self.advertised]
        if [v for v, _ in bundle.items] != expected:
            raise MalformedInput(
                f"share bundle of client {bundle.party} is addressed to {[v for v, _ in bundle.items]}, "
                f"expected its live neighbours {expected}"
            )
        ka.verify(
            self.identity_keys[bundle.party],
            bundle.signature,
            commitment_payload(self.params.round_id, bundle.party, bundle.commitment),
            what=f"self-mask commitment of client {bundle.party}",
        )
        self._bundles[bundle.party] = bundle

    def close_share(self) -> dict[int, bytes]:
        """U2, pruned; returns each member's delivery of sealed shares from U2 neighbours."""
        self._expect("share", "closing the share stage")
        self.shared = self._prune(set(self._bundles))
        self.stage = "mask"
        self._check_live("share", self.shared)
        deliveries: dict[int, list[tuple[int, bytes]]] = {v: [] for v in self.shared}
        for u in sorted(self.shared):
            for v, sealed in self._bundles[u].items:
                if v in self.shared:
                    deliveries[v].append((u, sealed))
        return {
            v: SealedShares(SealedShares.DELIVERY, self.params.round_id, v, tuple(items)).to_bytes()
            for v, items in sorted(deliveries.items())
        }

    def received_submissions(self) -> dict[str, bytes]:
        """Every masked input received so far, by client name, as its submission blob."""
        return {self.params.clients[i]: encode_submission(v) for i, v in sorted(self._masked.items())}

    # -- stage 3 -----------------------------------------------------------------------

    def receive_masked_input(self, data: bytes | memoryview, *, sender: int | None = None) -> None:
        """Admit one masked input; ``sender`` is the party the channel authenticated, which
        the message must name (a client cannot slip in a masked input as another)."""
        self._expect("mask", "masked input")
        message = MaskedInput.from_bytes(data)
        if sender is not None and message.sender != sender:
            raise MalformedInput(f"client {sender} sent a masked input in the name of client {message.sender}")
        check_round(self.params, message.round_id, f"masked input of client {message.sender}")
        self._admit(message.sender, self.shared, self._masked, "masked input")
        if message.vector.shape[0] != self.params.length:
            raise MalformedInput(
                f"masked input of client {message.sender} has length {message.vector.shape[0]}, expected {self.params.length}"
            )
        self._masked[message.sender] = message.vector
        np.add(self._total, message.vector, out=self._total)

    def close_mask(self) -> bytes:
        """U3 (the clients whose input is summed); returns the survivor-set announcement."""
        self._expect("mask", "closing the mask stage")
        self.survivors = frozenset(self._masked)
        self.stage = "acknowledge"
        if len(self.survivors) < self.params.threshold:
            raise self._abort("mask", len(self.survivors), "masked inputs received")
        for v in sorted(self.shared):
            holders = len(self.survivors.intersection(self.params.graph[v]))
            if holders < self.params.threshold:
                raise self._abort(
                    "mask", holders, f"surviving share holders of client {self.params.clients[v]!r}"
                )
        self._survivor_payload = survivor_payload(self.params.round_id, sorted(self.survivors))
        return SurvivorSet(self.params.round_id, tuple(sorted(self.survivors))).to_bytes()

    # -- stage 4 -----------------------------------------------------------------------

    def receive_acknowledgement(self, data: bytes) -> None:
        self._expect("acknowledge", "survivor-set signature")
        message = Acknowledgements.from_bytes(data, Acknowledgements.SINGLE)
        check_round(
            self.params, message.round_id, f"survivor-set signature of client {message.party}"
        )
        self._admit(message.party, self.survivors, self._acks, "survivor-set signature")
        signature = message.signatures[0][1]
        ka.verify(
            self.identity_keys[message.party],
            signature,
            self._survivor_payload,
            what=f"survivor-set signature of client {message.party}",
        )
        self._acks[message.party] = signature

    def close_acknowledge(self) -> bytes:
        """Returns the list of survivor-set signatures every acknowledging client checks."""
        self._expect("acknowledge", "closing the consistency check")
        self.acknowledged = frozenset(self._acks)
        self.stage = "unmask"
        if len(self.acknowledged) < self.params.threshold:
            raise self._abort("unmask", len(self.acknowledged), "survivor-set signatures")
        return Acknowledgements(
            Acknowledgements.LIST, self.params.round_id, SERVER, tuple(sorted(self._acks.items()))
        ).to_bytes()

    def receive_unmask(self, data: bytes) -> None:
        self._expect("unmask", "unmask response")
        response = UnmaskResponse.from_bytes(data)
        check_round(self.params, response.round_id, f"unmask response of client {response.sender}")
        self._admit(response.sender, self.acknowledged, self._responses, "unmask response")
        peers = [v for v in self.params.graph[response.sender] if v in self.shared]
        expected_b = [v for v in peers if v in self.survivors]
        expected_s = [v for v in peers if v not in self.survivors]
        got_b = [v for v, _ in response.self_mask_shares]
        got_s = [v for v, _ in response.mask_key_shares]
        if got_b != expected_b or got_s != expected_s:
            raise MalformedInput(
                f"unmask response of client {response.sender} reveals self-mask shares of {got_b} and key "
                f"shares of {got_s}; expected {expected_b} and {expected_s}"
            )
        for _, share in response.self_mask_shares + response.mask_key_shares:
            shamir.decode_share(share)
        self._responses[response.sender] = response

    def finish(self) -> MaskingOutcome:
        """Reconstruct the secrets, unmask the total, and publish the transcript."""
        self._expect("unmask", "finishing the round")
        self.stage = "done"
        b_shares: dict[int, dict[int, int]] = {v: {} for v in self.survivors}
        s_shares: dict[int, dict[int, int]] = {v: {} for v in self.shared - self.survivors}
        for w, response in self._responses.items():
            for v, share in response.self_mask_shares:
                b_shares[v][w + 1] = shamir.decode_share(share)
            for v, share in response.mask_key_shares:
                s_shares[v][w + 1] = shamir.decode_share(share)
        t = self.params.threshold
        for owner_shares in (b_shares, s_shares):
            for v, shares in sorted(owner_shares.items()):
                if len(shares) < t:
                    raise self._abort(
                        "unmask", len(shares), f"shares to unmask client {self.params.clients[v]!r}"
                    )
        names = self.params.clients
        round_id = self.params.round_id
        # Each secret has its own holders, hence its own abscissa set: the Lagrange
        # coefficients of every first try (the t smallest abscissas) in one batch.
        first_tries = {
            tuple(sorted(shares)[:t])
            for owner_shares in (b_shares, s_shares)
            for shares in owner_shares.values()
        }
        coefficients = dict(
            zip(first_tries, shamir.lagrange_at_zero_many(list(first_tries)))
        )

        def reconstruct(
            v: int,
            shares: dict[int, int],
            size: int,
            valid: Callable[[bytes], bool],
            what: str,
            check: str,
        ) -> bytes:
            found = _reconstruct_checked(
                shares, threshold=t, secret_bytes=size, valid=valid, coefficients=coefficients
            )
            if found is None:
                raise BadShare(
                    f"round {round_id}: reconstructed {what} of client {names[v]!r} does not match its "
                    f"{check}, and no {t} of the {len(shares)} revealed shares tried yield one that "
                    "does: a share holder sent a bad share (or the client dealt inconsistent shares)",
                    client=names[v],
                )
            secret, bad = found
            if bad:
                self.bad_shares[v] = tuple(x - 1 for x in bad)
            return secret

        def seed_matches(seed: bytes, v: int) -> bool:
            return self_mask_commitment(round_id, v, seed) == self._bundles[v].commitment

        def key_matches(raw: bytes, v: int) -> bool:
            return ka.X25519Key(raw).public == self.adverts[v].mask_key

        self_seeds = {
            v: reconstruct(
                v,
                shares,
                SEED_BYTES,
                functools.partial(seed_matches, v=v),
                "self-mask seed",
                "signed commitment",
            )
            for v, shares in sorted(b_shares.items())
        }
        dropped_keys = {
            v: reconstruct(
                v,
                shares,
                ka.KEY_BYTES,
                functools.partial(key_matches, v=v),
                "mask key",
                "advertised key",
            )
            for v, shares in sorted(s_shares.items())
        }
        # The running sum is not needed after this: unmask it in place rather than copy
        # megabytes.
        total = self._total
        _remove_masks(
            self.params,
            total,
            self_mask_seeds=self_seeds,
            dropped_mask_keys={v: ka.X25519Key(raw) for v, raw in dropped_keys.items()},
            mask_public_keys={v: a.mask_key for v, a in self.adverts.items()},
            shared=self.shared,
            survivors=self.survivors,
            expander=self._expander,
        )
        params = self.params
        transcript = MaskingTranscript(
            round=params.round_id,
            round_seed=params.round_seed,
            clients=params.clients,
            length=params.length,
            neighbours=None if params.complete else params.neighbours,  # None: the complete graph (SecAgg)
            threshold=params.threshold,
            identity_keys={names[i]: key for i, key in enumerate(self.identity_keys)},
            advertisements={
                names[v]: AdvertisedKeys(self.adverts[v].cipher_key, self.adverts[v].mask_key,
                                         self.adverts[v].signature)
                for v in sorted(self.advertised)
            },
            shared=tuple(names[v] for v in sorted(self.shared)),
            survivors=tuple(names[v] for v in sorted(self.survivors)),
            dropped={names[v]: stage for v, stage in sorted(self.dropped().items())},
            self_mask_commitments={
                names[v]: SignedCommitment(self._bundles[v].commitment, self._bundles[v].signature)
                for v in sorted(self.survivors)
            },
            self_mask_seeds={names[v]: seed for v, seed in sorted(self_seeds.items())},
            dropped_mask_keys={names[v]: raw for v, raw in sorted(dropped_keys.items())},
            total_sha256=total_digest(total),
        ).to_json()
        return MaskingOutcome(
            total=total,
            included=tuple(sorted(self.survivors)),
            dropped=self.dropped(),
            transcript=transcript,
            masked=dict(self._masked),
            bad_shares=dict(self.bad_shares),
        )


# ---------------------------------------------------------------------------------------
# In-process runner


def run_round(
    params: MaskingParams,
    vectors: Sequence[np.ndarray],
    *,
    drop: Mapping[int, Stage] | None = None,
    identities: Sequence[Ed25519PrivateKey] | None = None,
    forged_messages: Mapping[int, bytes] | None = None,
) -> MaskingOutcome:
    """Run every party in this process, passing encoded messages between them.

    ``drop[i] = stage`` makes client i stop answering from ``stage`` on (it sends nothing
    in that stage or later), so dropouts take the same code path as in a deployment.
    ``forged_messages[i]`` is sent by client i in place of its masked input (a client that
    skips our encoder); a message the server refuses leaves that client out of the sum and
    is returned in ``rejected``. A round that cannot finish raises with the inputs that had
    arrived attached (``received``, by client name): their senders have spent privacy.
    """
    n = len(params.clients)
    if len(vectors) != n:
        raise MalformedInput(f"{len(vectors)} input vectors for {n} clients")
    drop = dict(drop or {})
    for client, stage in drop.items():
        if not 0 <= client < n or stage not in STAGES:
            raise MalformedInput(
                f"drop entry {client!r}: {stage!r} needs a client in 0..{n - 1} and a stage in {STAGES}"
            )
    identities = (
        list(identities)
        if identities is not None
        else [Ed25519PrivateKey.generate() for _ in range(n)]
    )
    # One tuple shared by every client (tuple() of a tuple is the same object: no N copies).
    identity_keys = tuple(ka.public_bytes(key) for key in identities)
    forged = dict(forged_messages or {})
    rejected: dict[int, tuple[str, bytes]] = {}
    server = MaskingServer(params, identity_keys=identity_keys)
    clients = [
        MaskingClient(i, params, identity=identities[i], identity_keys=identity_keys)
        for i in range(n)
    ]

    def answers(i: int, stage: Stage) -> bool:
        return i not in drop or STAGES.index(drop[i]) > STAGES.index(stage)

    try:
        for i in range(n):
            if answers(i, "advertise"):
                server.receive_advertisement(clients[i].advertise())
        for i, adverts in server.close_advertise().items():
            if answers(i, "share"):
                server.receive_shares(clients[i].share_keys(adverts))
        for i, delivery in server.close_share().items():
            if answers(i, "mask"):
                message = forged.get(i) or clients[i].mask_input(vectors[i], delivery)
                try:
                    server.receive_masked_input(message, sender=i)
                except ProtocolError as exc:
                    rejected[i] = (str(exc), bytes(message))
        announcement = server.close_mask()
        for i in sorted(server.survivors):
            if answers(i, "unmask"):
                try:
                    acknowledgement = clients[i].acknowledge(announcement)
                except ProtocolError:
                    # A client that refuses (or, forging, never followed the protocol) stays
                    # silent, as it would over the wire; the server's thresholds decide.
                    continue
                server.receive_acknowledgement(acknowledgement)
        signatures = server.close_acknowledge()
        for i in sorted(server.acknowledged):
            try:
                response = clients[i].unmask(signatures)
            except ProtocolError:
                continue  # too few neighbours signed, or a refusal: this client stays silent
            server.receive_unmask(response)
        return replace(server.finish(), rejected={i: why for i, (why, _) in rejected.items()})
    except RoundAbort as exc:
        exc.received = {**server.received_submissions(),
                        **{params.clients[i]: message for i, (_, message) in rejected.items()}}
        raise



@dataclass(frozen=True)
class SecureSumResult:
    """Outcome of :func:`secure_sum`; client numbers are indices into the input list."""

    total: np.ndarray
    included: tuple[int, ...]
    dropped: Mapping[int, Stage]
    transcript: dict[str, Any]
    masked_vectors: Mapping[int, np.ndarray] = field(repr=False)


def _uint32_inputs(vectors: Sequence[np.ndarray]) -> int:
    if len(vectors) == 0:
        raise MalformedInput("no input vectors")
    length = None
    for i, v in enumerate(vectors):
        if not isinstance(v, np.ndarray) or v.dtype != np.uint32 or v.ndim != 1:
            raise MalformedInput(
                f"input {i} must be a 1-D uint32 array, got {getattr(v, 'dtype', type(v).__name__)}"
            )
        if length is None:
            length = v.shape[0]
        elif v.shape[0] != length:
            raise MalformedInput(f"input {i} has length {v.shape[0]}, expected {length}")
    assert length is not None
    return length


def secure_sum(
    vectors: Sequence[np.ndarray],
    *,
    neighbours: int | None = None,
    threshold: int | None = None,
    drop: Mapping[int, Stage] | None = None,
    seed: bytes | int | None = None,
    round_id: int = 0,
    identities: Sequence[Ed25519PrivateKey] | None = None,
) -> SecureSumResult:
    """Securely sum uint32 vectors mod 2^32 among ``len(vectors)`` in-process clients.

    ``neighbours=None`` is SecAgg (complete graph), an int k is SecAgg+; ``seed`` is the
    public round seed from which the graph is derived (bytes, or an int taken as 32
    big-endian bytes; fresh random bytes when None).
    Client i is named ``str(i)`` in the transcript; ``identities`` are the clients'
    long-term Ed25519 keys (fresh ones when None), as for :func:`run_round`.
    """
    length = _uint32_inputs(vectors)
    if seed is None:
        seed = os.urandom(32)
    elif isinstance(seed, int):
        seed = seed.to_bytes(32, "big")
    params = MaskingParams.create(
        round_id=round_id,
        round_seed=seed,
        clients=[str(i) for i in range(len(vectors))],
        length=length,
        neighbours=neighbours,
        threshold=threshold,
    )
    outcome = run_round(params, vectors, drop=drop, identities=identities)
    return SecureSumResult(
        outcome.total, outcome.included, outcome.dropped, outcome.transcript, outcome.masked
    )


# ---------------------------------------------------------------------------------------
# The transcript: what the server publishes, and what the auditor reads back


@dataclass(frozen=True)
class AdvertisedKeys:
    """A client's advertised public keys and its signature over them (the transcript's copy
    of its :class:`KeyAdvertisement`, whose round and index the transcript gives)."""

    cipher_key: bytes
    mask_key: bytes
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"cipher_key": self.cipher_key.hex(), "mask_key": self.mask_key.hex(),
                "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> AdvertisedKeys:
        fields = exact_fields(data, {"cipher_key", "mask_key", "signature"}, what="advertisement", where=where)
        return cls(hex_bytes(fields["cipher_key"], what="cipher_key", where=where, size=ka.KEY_BYTES),
                   hex_bytes(fields["mask_key"], what="mask_key", where=where, size=ka.KEY_BYTES),
                   hex_bytes(fields["signature"], what="signature", where=where, size=ka.SIGNATURE_BYTES))


@dataclass(frozen=True)
class SignedCommitment:
    """A survivor's commitment to its self-mask seed, signed under its identity key."""

    commitment: bytes
    signature: bytes

    def to_json(self) -> dict[str, str]:
        return {"commitment": self.commitment.hex(), "signature": self.signature.hex()}

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> SignedCommitment:
        fields = exact_fields(data, {"commitment", "signature"}, what="self-mask commitment", where=where)
        return cls(hex_bytes(fields["commitment"], what="commitment", where=where, size=COMMITMENT_BYTES),
                   hex_bytes(fields["signature"], what="signature", where=where, size=ka.SIGNATURE_BYTES))


def _hex_of_size(size: int) -> Callable[[Any, str], bytes]:
    return lambda value, where: hex_bytes(value, what="value", where=where, size=size)


@dataclass(frozen=True)
class MaskingTranscript:
    """A masking round's public record (version :data:`TRANSCRIPT_VERSION`): its parameters,
    the signed advertisements and seed commitments, who shared, survived or dropped (and at
    which stage), the revealed self-mask seeds and dropped sharers' mask keys, and the
    digest of the uint32 total. Clients are named by name; the party number of one is its
    position in ``clients``.

    The round's parameters are kept as written (``params`` validates them): a transcript
    that names ``neighbours = n - 1`` writes that back, not the None it means."""

    round: int
    round_seed: bytes
    clients: tuple[str, ...]
    length: int
    neighbours: int | None
    threshold: int
    identity_keys: Mapping[str, bytes]
    advertisements: Mapping[str, AdvertisedKeys]
    shared: tuple[str, ...]
    survivors: tuple[str, ...]
    dropped: Mapping[str, str]
    self_mask_commitments: Mapping[str, SignedCommitment]
    self_mask_seeds: Mapping[str, bytes]
    dropped_mask_keys: Mapping[str, bytes]
    total_sha256: str
    codec: Mapping[str, Any] | None = None
    """The codec's parameters, from which the levels decode; the in-process runner's
    transcript (:func:`run_round`, :func:`secure_sum`: uint32 levels) has none."""

    @property
    def summed(self) -> tuple[str, ...]:
        return self.survivors

    def to_json(self) -> dict[str, Any]:
        codec = {} if self.codec is None else {"codec": dict(self.codec)}
        return {
            "protocol": PROTOCOL,
            "version": TRANSCRIPT_VERSION,
            "round": self.round,
            "round_seed": self.round_seed.hex(),
            "clients": list(self.clients),
            "length": self.length,
            "neighbours": self.neighbours,
            "threshold": self.threshold,
            "identity_keys": {name: key.hex() for name, key in self.identity_keys.items()},
            "advertisements": {name: keys.to_json() for name, keys in self.advertisements.items()},
            "shared": list(self.shared),
            "survivors": list(self.survivors),
            "dropped": dict(self.dropped),
            "self_mask_commitments": {name: c.to_json() for name, c in self.self_mask_commitments.items()},
            "self_mask_seeds": {name: seed.hex() for name, seed in self.self_mask_seeds.items()},
            "dropped_mask_keys": {name: key.hex() for name, key in self.dropped_mask_keys.items()},
            "total_sha256": self.total_sha256,
            **codec,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> MaskingTranscript:
        fields = exact_fields(data, _TRANSCRIPT_FIELDS, optional={"codec"}, what="masking transcript", where=where)
        if fields["protocol"] != PROTOCOL:
            raise MalformedInput(f"{where}: not a masking transcript (protocol {fields['protocol']!r:.40})")
        if fields["version"] != TRANSCRIPT_VERSION:
            raise MalformedInput(f"{where}: masking transcript version {fields['version']!r:.40} is not "
                                 f"{TRANSCRIPT_VERSION}")
        neighbours, codec = fields["neighbours"], fields.get("codec")
        if "codec" in fields and not isinstance(codec, Mapping):
            raise MalformedInput(f"{where}: the codec parameters must be an object")
        dropped = keyed(fields["dropped"], lambda stage, at: text(stage, what="stage", where=at),
                        what="dropped", where=where)
        return cls(
            round=integer(fields["round"], what="round", where=where),
            round_seed=hex_bytes(fields["round_seed"], what="round_seed", where=where),
            clients=texts(fields["clients"], what="clients", where=where),
            length=integer(fields["length"], what="length", where=where),
            neighbours=None if neighbours is None else integer(neighbours, what="neighbours", where=where),
            threshold=integer(fields["threshold"], what="threshold", where=where),
            identity_keys=keyed(fields["identity_keys"], _hex_of_size(ka.KEY_BYTES), what="identity key",
                                where=where),
            advertisements=keyed(fields["advertisements"], lambda v, at: AdvertisedKeys.from_json(v, where=at),
                                 what="advertisement", where=where),
            shared=texts(fields["shared"], what="shared", where=where),
            survivors=texts(fields["survivors"], what="survivors", where=where),
            dropped=dropped,
            self_mask_commitments=keyed(fields["self_mask_commitments"],
                                        lambda v, at: SignedCommitment.from_json(v, where=at),
                                        what="self-mask commitment", where=where),
            self_mask_seeds=keyed(fields["self_mask_seeds"], _hex_of_size(SEED_BYTES), what="self-mask seed",
                                  where=where),
            dropped_mask_keys=keyed(fields["dropped_mask_keys"], _hex_of_size(ka.KEY_BYTES), what="mask key",
                                    where=where),
            total_sha256=text(fields["total_sha256"], what="total_sha256", where=where),
            codec=None if codec is None else dict(codec),
        )

    def params(self) -> MaskingParams:
        """The round's parameters, validated; MalformedInput when they cannot work."""
        try:
            return MaskingParams.create(round_id=self.round, round_seed=self.round_seed, clients=self.clients,
                                        length=self.length, neighbours=self.neighbours, threshold=self.threshold)
        except ConfigurationError as exc:
            raise MalformedInput(f"masking transcript parameters: {exc}") from exc

    def decoder(self) -> Codec:
        """The codec the survivors' levels decode with; MalformedInput where none is recorded."""
        if self.codec is None:
            raise MalformedInput("masking transcript lacks its 'codec' parameters")
        return codec_from_json(dict(self.codec))


TRANSCRIPT = MaskingTranscript
_TRANSCRIPT_FIELDS = {
    "protocol", "version", "round", "round_seed", "clients", "length", "neighbours", "threshold", "identity_keys",
    "advertisements", "shared", "survivors", "dropped", "self_mask_commitments", "self_mask_seeds",
    "dropped_mask_keys", "total_sha256",
}


def transcript_with_codec(transcript: Mapping[str, Any], codec: Codec) -> dict[str, Any]:
    """The committed transcript of a round whose levels ``codec`` encoded: the server's
    (:class:`MaskingOutcome`) with the codec added, so the auditor can decode the total."""
    record = MaskingTranscript.from_json(transcript, where="masking transcript")
    return replace(record, codec=codec.to_json()).to_json()


# ---------------------------------------------------------------------------------------
# Public recomputation (the auditor's path: no client secret needed)


def recompute_total(
    transcript: Mapping[str, Any], masked_vectors: Mapping[Any, np.ndarray]
) -> np.ndarray:
    """Re-derive the round's uint32 total from the transcript and the survivors' masked vectors.

    ``masked_vectors`` maps client names (``str(i)`` for :func:`secure_sum`; int keys are
    accepted and converted) to uint32 vectors. Checks the advertisement signatures, each
    survivor's self-mask commitment signature under its identity key and that its
    revealed seed hashes to that commitment, that each revealed mask key matches its
    advertised public key, and that the result hashes to the transcript's
    ``total_sha256``; raises :class:`MalformedInput`, :class:`BadSignature` or
    :class:`AggregateMismatch` (naming the client) otherwise.
    """
    record = MaskingTranscript.from_json(transcript, where="masking transcript")
    params = record.params()
    index = {name: i for i, name in enumerate(params.clients)}

    def members(names: tuple[str, ...], key: str) -> frozenset[int]:
        if any(n not in index for n in names):
            raise MalformedInput(f"transcript {key!r} must list clients of the round")
        return frozenset(index[n] for n in names)

    adverts, identity = record.advertisements, record.identity_keys
    shared, survivors = members(record.shared, "shared"), members(record.survivors, "survivors")
    if not survivors <= shared or not {params.clients[i] for i in shared} <= set(adverts):
        raise MalformedInput("transcript survivor, shared and advertised sets are not nested")
    mask_public: dict[int, bytes] = {}
    for name in sorted(adverts):
        if name not in index or name not in identity:
            raise MalformedInput(f"transcript advertisement of unknown client {name!r}")
        keys = adverts[name]
        advert = KeyAdvertisement(params.round_id, index[name], keys.cipher_key, keys.mask_key, keys.signature)
        ka.verify(identity[name], advert.signature, advert.signed_bytes(),
                  what=f"transcript advertisement of {name!r}")
        mask_public[index[name]] = advert.mask_key

    seeds, revealed_keys = record.self_mask_seeds, record.dropped_mask_keys
    if set(seeds) != {params.clients[i] for i in survivors}:
        raise MalformedInput("transcript 'self_mask_seeds' must hold exactly the survivors' seeds")
    if set(revealed_keys) != {params.clients[i] for i in shared - survivors}:
        raise MalformedInput(
            "transcript 'dropped_mask_keys' must hold exactly the dropped sharers' keys"
        )
    self_seeds = {index[n]: seed for n, seed in seeds.items()}
    commitments = record.self_mask_commitments
    if set(commitments) != set(seeds):
        raise MalformedInput(
            "transcript 'self_mask_commitments' must hold exactly the survivors' commitments"
        )
    for name in sorted(commitments):
        signed = commitments[name]
        ka.verify(
            identity[name],
            signed.signature,
            commitment_payload(params.round_id, index[name], signed.commitment),
            what=f"transcript self-mask commitment of {name!r}",
        )
        if (
            self_mask_commitment(params.round_id, index[name], self_seeds[index[name]])
            != signed.commitment
        ):
            raise AggregateMismatch(
                f"revealed self-mask seed of {name!r} does not match its signed commitment"
            )
    dropped_keys = {}
    for name, raw in revealed_keys.items():
        key = ka.x25519_private_from_bytes(raw, what=name)
        if ka.public_bytes(key) != mask_public[index[name]]:
            raise AggregateMismatch(
                f"revealed mask key of {name!r} does not match its advertised public key"
            )
        dropped_keys[index[name]] = key

    vectors = {str(k): v for k, v in masked_vectors.items()}
    expected = {params.clients[i] for i in survivors}
    if set(vectors) != expected:
        raise MalformedInput(
            f"masked vectors given for {sorted(vectors)}, the transcript's survivors are {sorted(expected)}"
        )
    total = np.zeros(params.length, dtype=np.uint32)
    for name in sorted(vectors):
        v = np.asarray(vectors[name])
        if v.dtype != np.uint32 or v.shape != (params.length,):
            raise MalformedInput(
                f"masked vector of {name!r} must be uint32 of length {params.length}, got {v.dtype} {v.shape}"
            )
        np.add(total, v, out=total)
    _remove_masks(
        params,
        total,
        self_mask_seeds=self_seeds,
        dropped_mask_keys=dropped_keys,
        mask_public_keys=mask_public,
        shared=shared,
        survivors=survivors,
        expander=MaskExpander(),
    )
    if total_digest(total) != record.total_sha256:
        raise AggregateMismatch("recomputed total does not match the transcript's total_sha256")
    return total


# ---------------------------------------------------------------------------------------
# The AggregationProtocol plug-in

_TENSOR = "masked"


def encode_submission(masked: np.ndarray) -> bytes:
    """A masked vector as the safetensors blob the ledger commits to."""
    return save_safetensors({_TENSOR: np.ascontiguousarray(masked, dtype=np.uint32)})


def decode_submission(blob: bytes, *, client: str) -> np.ndarray:
    tensors = load_submission_tensors(blob, client=client)
    vector = tensors.get(_TENSOR)
    if vector is None or vector.dtype != np.uint32 or vector.ndim != 1 or len(tensors) != 1:
        raise MalformedInput(
            f"submission of {client!r} must hold exactly one 1-D uint32 tensor {_TENSOR!r}"
        )
    return vector


class MaskingProtocol(AggregationProtocol):
    """SecAgg (``neighbours=None``) or SecAgg+ (k neighbours) over fixed-point updates."""

    name: ClassVar[str] = PROTOCOL

    def __init__(
        self,
        codec: Codec,
        *,
        neighbours: int | None = None,
        threshold: int | None = None,
        identities: Mapping[str, Ed25519PrivateKey] | None = None,
    ) -> None:
        """``identities`` are the clients' registered Ed25519 keys (fresh ones when None),
        so the transcript's identity keys can be checked against the registry."""
        self.codec = codec
        self.neighbours = neighbours
        self.threshold = threshold
        self.identities = dict(identities) if identities is not None else None

    def aggregate(
        self,
        updates: Mapping[str, np.ndarray],
        *,
        round_id: int,
        round_seed: bytes,
        drop: Mapping[str, Stage] | None = None,
        rng: np.random.Generator | None = None,
        forged: Mapping[str, ForgedInput] | None = None,
    ) -> AggregationResult:
        """Encode, run the four stages in-process, unmask and decode the survivors' sum.

        Raises :class:`TooManyDropouts` (with ``.stage`` and ``.dropped`` by client name)
        when the round cannot be unmasked, :class:`InvalidAggregate` when the unmasked sum
        is not a sum of valid encodings.
        """
        length = check_updates(updates)
        forged = check_forged(forged, updates)
        names = sorted(updates)
        if len(names) > self.codec.max_summands:
            raise ConfigurationError(
                f"{len(names)} clients exceed the codec's max_summands={self.codec.max_summands}"
            )
        unknown = sorted(set(drop or {}) - set(names))
        if unknown:
            raise MalformedInput(f"drop names clients that are not in the round: {unknown}")
        rng = rng if rng is not None else np.random.default_rng()
        params = MaskingParams.create(
            round_id=round_id,
            round_seed=round_seed,
            clients=names,
            length=length,
            neighbours=self.neighbours,
            threshold=self.threshold,
        )
        identities = None
        if self.identities is not None:
            missing = sorted(set(names) - set(self.identities))
            if missing:
                raise ConfigurationError(f"no identity key for clients {missing}")
            identities = [self.identities[name] for name in names]
        position = {name: i for i, name in enumerate(names)}  # not names.index: no N^2
        encoded = [
            forged_levels(forged[name], length) if name in forged and forged[name].values is not None
            else self.codec.encode(updates[name], rng)
            for name in names
        ]
        outcome = run_round(
            params,
            encoded,
            drop={position[c]: s for c, s in (drop or {}).items()},
            identities=identities,
            forged_messages={position[c]: f.message for c, f in forged.items() if f.message is not None},
        )
        transcript = transcript_with_codec(outcome.transcript, self.codec)
        included = tuple(names[i] for i in outcome.included)
        submissions = {names[i]: encode_submission(outcome.masked[i]) for i in outcome.included}
        rejected = {names[i]: reason for i, reason in outcome.rejected.items()}
        refused = {c: forged[c].message for c in rejected if c in forged}
        return AggregationResult(
            protocol=PROTOCOL,
            total=decode_or_refuse(lambda: self.codec.decode_sum(outcome.total, len(included)),
                                   round_id=round_id, received={**submissions, **refused}),
            included=included,
            dropped=tuple(sorted(names[i] for i in outcome.dropped if i not in outcome.included and i not in outcome.rejected)),
            rejected=rejected,
            submissions=submissions,
            rejected_submissions=refused,
            transcript=transcript,
        )


def forged_levels(forgery: ForgedInput, length: int) -> np.ndarray:
    """A forging client's uint32 levels, sent without encoding (any values, right length:
    a vector of another length is refused by the client's own framing)."""
    levels = np.asarray(forgery.values)
    if levels.dtype != np.uint32 or levels.shape != (length,):
        raise MalformedInput(f"forged masking input must be {length} uint32 levels, got {levels.dtype} {levels.shape}")
    return levels


def recompute_from_submissions(
    transcript: Mapping[str, Any], submissions: Mapping[str, bytes]
) -> np.ndarray:
    """The auditor's check: decoded float64 total from the transcript and committed blobs."""
    record = MaskingTranscript.from_json(transcript, where="masking transcript")
    missing = sorted(set(record.survivors) - set(submissions))
    if missing:
        raise MalformedInput(f"masking transcript names survivors without a submission: {missing}")
    codec = record.decoder()
    vectors = {name: decode_submission(submissions[name], client=name) for name in record.survivors}
    total = recompute_total(transcript, vectors)
    return codec.decode_sum(total, len(record.survivors))


def decoding_tolerance(transcript: Mapping[str, Any]) -> float:
    """Stochastic rounding moves each client's value by less than one step: survivors x step."""
    record = MaskingTranscript.from_json(transcript, where="masking transcript")
    return len(record.survivors) * record.decoder().step


__all__ = [
    "AdvertisedKeys",
    "MaskingClient",
    "MaskingOutcome",
    "MaskingParams",
    "MaskingProtocol",
    "MaskingServer",
    "MaskingTranscript",
    "SecureSumResult",
    "SignedCommitment",
    "decoding_tolerance",
    "recompute_from_submissions",
    "recompute_total",
    "run_round",
    "secure_sum",
    "transcript_with_codec",
]
