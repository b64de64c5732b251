"""Build the aggregation protocol a round asked for, with its keys and public parameters.

Homomorphic modes need a key holder, a party apart from the aggregator. The federation
keeps one per mode for its whole life, its secret in ``keys/``; the aggregator object
receives only the public key or context (see the modules' trust-model docstrings).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from .keyring import Keyring, KeyringError
from .protocols.base import AggregationProtocol
from .protocols.errors import ConfigurationError
from .protocols.quantize import FixedPointCodec
from .settings import FederationSettings

if TYPE_CHECKING:  # phe loads only where a Paillier key is made or used
    from .protocols.paillier import PaillierKeyHolder

PAILLIER_KEY = "paillier-key-holder.json"
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


def new_paillier_key_holder(settings: FederationSettings, keys: Keyring) -> PaillierKeyHolder:
    """The federation's Paillier key holder, made once at genesis with the genesis key size;
    genesis publishes its public key and modulus proof (:meth:`PaillierKeyHolder.publish`)."""
    from .protocols.paillier import PaillierKeyHolder

    holder = PaillierKeyHolder.generate(bits=settings.protocol.paillier_key_bits)
    keys.store(PAILLIER_KEY, holder.to_private_bytes())
    return holder


def _key_holder(keys: Keyring, name: str, load, generate):
    try:
        return load(keys.load(name))
    except KeyringError:
        holder = generate()
        keys.store(name, holder.to_private_bytes())
        return holder


def build_protocol(
    name: str, settings: FederationSettings, keys: Keyring, *, participants: Sequence[str]
) -> ProtocolSetup:
    """The protocol for a round among ``participants`` (in the simulation every party's
    keys are at hand; masking signs with the clients' registered identity keys)."""
    max_summands = len(participants)
    bound = settings.training.update_bound
    codec = FixedPointCodec(clip=bound, bits=settings.protocol.bits, max_summands=max_summands)
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
        from .protocols.paillier import PaillierKeyHolder, PaillierProtocol, public_key_to_json

        try:
            holder = PaillierKeyHolder.from_private_bytes(keys.load(PAILLIER_KEY))
        except KeyringError as exc:
            raise ConfigurationError(f"no Paillier key holder in this federation's keys ({exc}): its genesis "
                                     "predates published Paillier keys; create a new federation") from exc
        protocol = PaillierProtocol(public_key=holder.public_key, key_holder=holder, codec=codec)
        return ProtocolSetup(protocol, {"codec": codec.to_json(), "public_key": public_key_to_json(holder.public_key)}, bound)
    if name == "ckks":
        from .protocols.ckks import CkksKeyHolder, CkksProtocol, context_id

        holder = _key_holder(keys, CKKS_KEY, CkksKeyHolder.from_private_bytes, CkksKeyHolder.generate)
        protocol = CkksProtocol(public_context=holder.public_context, key_holder=holder, clip=bound,
                                max_summands=max_summands)
        return ProtocolSetup(protocol, {"clip": bound, "context_sha256": context_id(holder.public_context).hex()}, bound)
    raise ValueError(f"unknown protocol {name!r}")
