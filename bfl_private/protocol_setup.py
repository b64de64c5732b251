"""The public parameters of a round's protocol, and the one-shot protocols' key holders.

The coordinator builds the protocol from the round's parties (:class:`RoundParties`),
each an object built from its own folder under ``parties/`` (:mod:`bfl_private.parties`):
it never loads another party's key itself.

Paillier rounds are decrypted by a quorum (2f+1 of 3f+1, as for blocks) of the
validators, each holding one share of the threshold key in its own folder (see
:mod:`~bfl_private.protocols.paillier_committee`). The shares are made once per
federation by a TRUSTED DEALER, the ``paillier-dealer`` party
(:class:`~bfl_private.parties.PaillierDealer`, :func:`~bfl_private.protocols.
threshold_paillier.deal_shares`, safe primes): while dealing it knows p and q; it hands each
validator its share and keeps only the proof that n is well formed (:mod:`~bfl_private.
protocols.paillier_modulus`); the public key says ``key_generation: "trusted-dealer"``.
A dealer-free generation exists (:mod:`~bfl_private.protocols.paillier_dkg`) but is not
used here. Every Paillier round announces that key with its proof, at the key size genesis
fixes. CKKS keeps a single key holder, the ``ckks-key-holder`` party apart from the
aggregator, its secret in its own folder. Masking needs no key holder: each hospital holds
its own keys, and the round posts only :func:`masking_parameters`. The aggregator object
receives only public keys or contexts (see the modules' trust-model docstrings).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .keyring import KeyringError
from .parties import CkksKeyHolderParty, PaillierDealer, ValidatorParty
from .primitives.errors import BflError
from .protocols.base import AggregationProtocol
from .protocols.quantize import Codec, FixedPointCodec, IntegerRingCodec
from .settings import DISTRIBUTED_PROTOCOLS, FederationSettings


class ProtocolUnavailable(BflError, RuntimeError):
    """The round's protocol cannot run with the parties at hand; nothing was sent."""


@dataclass(frozen=True)
class RoundParties:
    """The key holders a one-shot round calls on, each acting from its own folder."""

    validators: Sequence[ValidatorParty]
    paillier_dealer: PaillierDealer
    ckks_key_holder: CkksKeyHolderParty


@dataclass(frozen=True)
class ProtocolSetup:
    protocol: AggregationProtocol
    public: dict[str, Any]
    """Parameters posted in ``round_open`` (no secret)."""
    bound: float

    def public_parameters(self) -> dict[str, Any]:
        return dict(self.public)


def _validator_committee(parties: RoundParties, settings: FederationSettings, *, min_summands: int):
    """The validators' threshold Paillier key and its modulus proof, dealt by the dealer
    party on first use (see above); each validator refuses to decrypt a sum of fewer than
    ``min_summands`` inputs."""
    from .ledger.contracts import min_quorum
    from .protocols.paillier_committee import ValidatorCommittee

    validators = parties.validators
    if len(validators) != settings.n_validators:
        # Dealing among a subset would make a key the other validators do not share.
        raise ProtocolUnavailable(f"a Paillier round is decrypted with the validators' key shares, and only "
                                  f"{len(validators)} of the {settings.n_validators} validators run in this "
                                  f"process (threshold decryption by validators in their own processes is not "
                                  f"implemented): run Paillier rounds without --validator")
    try:
        holders = [v.paillier_share_holder(min_summands=min_summands) for v in validators]
        proof = parties.paillier_dealer.proof()
    except KeyringError:
        parties.paillier_dealer.deal(validators, bits=settings.protocol.paillier_key_bits,
                                     quorum=min_quorum(len(validators)))
        holders = [v.paillier_share_holder(min_summands=min_summands) for v in validators]
        proof = parties.paillier_dealer.proof()
    return ValidatorCommittee(holders[0].share.public_key, holders), proof


def round_codec(settings: FederationSettings, *, participants: int) -> Codec:
    """How a round among ``participants`` maps inputs to Z_(2^32): distributed DP's integer
    shares exactly in the ring, local DP's weighted updates in fixed point."""
    if settings.privacy.mode == "distributed":
        return IntegerRingCodec(max_summands=participants)
    return FixedPointCodec(clip=settings.training.update_bound, bits=settings.protocol.bits,
                           max_summands=participants)


def masking_parameters(settings: FederationSettings, *, participants: int) -> tuple[Codec, int | None]:
    """The codec and neighbour degree a masking round among ``participants`` posts (None:
    the complete graph). Public: whoever drives the round chooses them from genesis alone."""
    k = settings.protocol.neighbours
    return round_codec(settings, participants=participants), k if k is None or k < participants else None


def build_protocol(
    name: str, settings: FederationSettings, parties: RoundParties, *, participants: Sequence[str]
) -> ProtocolSetup:
    """The one-shot protocol (``paillier``, ``ckks``, ``plain``) for a round among
    ``participants``: the aggregator's side, with the key holder it decrypts through.

    In distributed DP the clients' vectors are integer shares, encoded exactly in the ring
    (:class:`IntegerRingCodec`), and Paillier's decrypting validators refuse a sum of fewer
    than N - t inputs: it would carry less noise than the participants' records claim."""
    max_summands = len(participants)
    bound = settings.training.update_bound
    distributed = settings.privacy.mode == "distributed"
    if distributed and name not in DISTRIBUTED_PROTOCOLS:
        raise ValueError(f"distributed DP needs {' or '.join(DISTRIBUTED_PROTOCOLS)}, not {name!r}")
    codec = round_codec(settings, participants=max_summands)
    min_summands = max_summands - settings.privacy.collusion_threshold if distributed else 2
    if name == "plain":
        from .protocols.plain import PlainProtocol

        return ProtocolSetup(PlainProtocol(bound=bound), {"bound": bound}, bound)
    if name == "paillier":
        from .protocols.paillier import PaillierProtocol, PublishedKey

        committee, proof = _validator_committee(parties, settings, min_summands=min_summands)
        protocol = PaillierProtocol(public_key=committee.public_key, key_holder=committee, codec=codec)
        # public_key and modulus_proof: the record hospitals and the verifier parse back (PublishedKey.from_json)
        announced = PublishedKey(committee.public_key, proof).to_json()
        return ProtocolSetup(protocol, {"codec": codec.to_json(), **announced,
                                        "threshold_key": committee.key.to_json()}, bound)
    if name == "ckks":
        from .protocols.ckks import CkksProtocol, context_id

        holder = parties.ckks_key_holder.holder()
        protocol = CkksProtocol(public_context=holder.public_context, key_holder=holder, clip=bound,
                                max_summands=max_summands)
        return ProtocolSetup(protocol, {"clip": bound, "context_sha256": context_id(holder.public_context).hex()}, bound)
    raise ValueError(f"{name!r} is not a one-shot protocol (masking posts masking_parameters; its hospitals "
                     f"hold their own keys)")
