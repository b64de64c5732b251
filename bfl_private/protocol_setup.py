"""Build the aggregation protocol a round asked for, with its keys and public parameters.

Paillier rounds are decrypted by a quorum (2f+1 of 3f+1, as for blocks) of the
validators, each holding one share of the threshold key in ``keys/`` (see
:mod:`~bfl_private.protocols.paillier_committee`). The shares are made once per
federation by a TRUSTED DEALER in this process (:func:`~bfl_private.protocols.
threshold_paillier.deal_key`, safe primes), which stores only the shares and, while it
still knows p and q, the proof that n is well formed (:mod:`~bfl_private.protocols.
paillier_modulus`); the public key says ``key_generation: "trusted-dealer"``. Every
Paillier round announces that key with its proof, at the key size genesis fixes. CKKS keeps a single key holder, a party apart
from the aggregator, its secret in ``keys/``. The aggregator object receives only public
keys or contexts (see the modules' trust-model docstrings).
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import rfc8785

from .keyring import Keyring, KeyringError
from .protocols.base import AggregationProtocol
from .protocols.quantize import Codec, FixedPointCodec, IntegerRingCodec
from .settings import DISTRIBUTED_PROTOCOLS, FederationSettings, validator_ids

PAILLIER_SHARE = "paillier-share.{validator}.json"
PAILLIER_MODULUS_PROOF = "paillier-modulus-proof.json"
"""Public (it is posted in every Paillier round's opening); kept beside the shares."""
CKKS_KEY = "ckks-key-holder.bin"


@dataclass(frozen=True)
class ProtocolSetup:
    protocol: AggregationProtocol
    public: dict[str, Any]
    """Parameters posted in ``round_open`` (no secret)."""
    bound: float

    def public_parameters(self) -> dict[str, Any]:
        return dict(self.public)

    def garbage_payload(self, length: int, weight: float, rng: np.random.Generator) -> np.ndarray:
        """What a malicious client sends instead of its update: noise far outside the agreed
        range, followed by its true weight (a wrong weight would get the round refused).

        Plain mode refuses it on receipt; masking and HE clip it to ±bound when encoding
        (they cannot see plaintexts), so there it is a bounded bias: the aggregate range rule
        refuses the round when it pushes a coordinate past what the included clients' weights
        allow, and the validators' quality gate judges the model otherwise.
        """
        garbage = rng.uniform(-1000 * self.bound, 1000 * self.bound, size=length).astype(np.float32)
        garbage[-1] = weight
        return garbage


def _key_holder(keys: Keyring, name: str, load, generate):
    try:
        return load(keys.load(name))
    except KeyringError:
        holder = generate()
        keys.store(name, holder.to_private_bytes())
        return holder


def _validator_committee(keys: Keyring, settings: FederationSettings, *, min_summands: int):
    """The validators' threshold Paillier key and its modulus proof, dealt on first use
    (trusted dealer, see above); each validator refuses to decrypt a sum of fewer than
    ``min_summands`` inputs."""
    from .ledger.contracts import min_quorum
    from .protocols.paillier_committee import ShareHolder, ValidatorCommittee
    from .protocols.paillier_modulus import ModulusProof, prove_modulus
    from .protocols.threshold_paillier import KeyShare, deal_shares, safe_prime_pair

    validators = validator_ids(settings.n_validators)
    try:
        shares = [KeyShare.from_private_bytes(keys.load(PAILLIER_SHARE.format(validator=v))) for v in validators]
        proof = ModulusProof.from_json(json.loads(keys.load(PAILLIER_MODULUS_PROOF)))
    except KeyringError:
        p, q = safe_prime_pair(settings.protocol.paillier_key_bits)
        shares = deal_shares(p, q, parties=validators, quorum=min_quorum(len(validators)))
        proof = prove_modulus(p, q)
        # Only the shares and the proof are stored: p and q are never written, so once this
        # process exits only a quorum of validators can decrypt (while it runs, it is the dealer).
        for share in shares:
            keys.store(PAILLIER_SHARE.format(validator=share.party), share.to_private_bytes())
        keys.store(PAILLIER_MODULUS_PROOF, rfc8785.dumps(proof.to_json()))
    return ValidatorCommittee(shares[0].public_key, [ShareHolder(share, min_summands=min_summands)
                                                     for share in shares]), proof


def build_protocol(
    name: str, settings: FederationSettings, keys: Keyring, *, participants: Sequence[str]
) -> ProtocolSetup:
    """The protocol for a round among ``participants`` (in the simulation every party's
    keys are at hand; masking signs with the clients' registered identity keys).

    In distributed DP the clients' vectors are integer shares, encoded exactly in the ring
    (:class:`IntegerRingCodec`), and Paillier's decrypting validators refuse a sum of fewer
    than N - t inputs: it would carry less noise than the participants' records claim."""
    max_summands = len(participants)
    bound = settings.training.update_bound
    distributed = settings.privacy.mode == "distributed"
    if distributed and name not in DISTRIBUTED_PROTOCOLS:
        raise ValueError(f"distributed DP needs {' or '.join(DISTRIBUTED_PROTOCOLS)}, not {name!r}")
    codec: Codec = (IntegerRingCodec(max_summands=max_summands) if distributed
                    else FixedPointCodec(clip=bound, bits=settings.protocol.bits, max_summands=max_summands))
    min_summands = max_summands - settings.privacy.collusion_threshold if distributed else 2
    if name == "plain":
        from .protocols.plain import PlainProtocol

        return ProtocolSetup(PlainProtocol(bound=bound), {"bound": bound}, bound)
    if name == "masking":
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        from .protocols.masking import MaskingProtocol

        k = settings.protocol.neighbours
        identities = {c: Ed25519PrivateKey.from_private_bytes(keys.identity(c).private_bytes()) for c in participants}
        protocol = MaskingProtocol(codec, neighbours=k if k is None or k < max_summands else None, identities=identities)
        return ProtocolSetup(protocol, {"codec": codec.to_json(), "neighbours": protocol.neighbours}, bound)
    if name == "paillier":
        from .protocols.paillier import PaillierProtocol, PublishedKey

        committee, proof = _validator_committee(keys, settings, min_summands=min_summands)
        protocol = PaillierProtocol(public_key=committee.public_key, key_holder=committee, codec=codec)
        # public_key and modulus_proof: the record hospitals and the verifier parse back (PublishedKey.from_json)
        announced = PublishedKey(committee.public_key, proof).to_json()
        return ProtocolSetup(protocol, {"codec": codec.to_json(), **announced,
                                        "threshold_key": committee.key.to_json()}, bound)
    if name == "ckks":
        from .protocols.ckks import CkksKeyHolder, CkksProtocol, context_id

        holder = _key_holder(keys, CKKS_KEY, CkksKeyHolder.from_private_bytes, CkksKeyHolder.generate)
        protocol = CkksProtocol(public_context=holder.public_context, key_holder=holder, clip=bound,
                                max_summands=max_summands)
        return ProtocolSetup(protocol, {"clip": bound, "context_sha256": context_id(holder.public_context).hex()}, bound)
    raise ValueError(f"unknown protocol {name!r}")
