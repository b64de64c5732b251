"""The engine's side of a one-shot (Paillier, CKKS, plain) round: the hospitals made their
submissions (with the client step, ``encrypt_update``), the engine hands them to the
protocol's ``aggregate_submissions``: every blob is checked on receipt (one that does not
decode is *rejected*), the aggregator adds the ciphertexts, and the federation's key
holder (built by :func:`~bfl_private.protocol_setup.build_protocol`) decrypts only the sum
it recomputes itself from the committed submissions. The protocols' own ``aggregate``
(which encrypts for every client in one process, for their tests and benchmarks) ends in
the same call, so the transcript is the same.
``plain`` is the unprotected baseline: the hospitals send their payloads in the clear (the
server sees each one) and :meth:`PlainProtocol.aggregate_submissions` range-checks and sums them.
"""
from __future__ import annotations

from collections.abc import Mapping

from ..ledger.canonical import canonical_bytes
from ..protocol_setup import ProtocolSetup
from ..protocols.base import AggregationResult, Stage
from ..protocols.errors import ConfigurationError
from ..protocols.paillier import PaillierProtocol, public_key_to_json
from ..protocols.plain import PlainProtocol


def public_key_material(setup: ProtocolSetup) -> bytes:
    """What hospitals receive: the Paillier public key as RFC 8785 JSON, or the serialised
    CKKS public context (public key only); nothing for plain. Canonical bytes, never a pickle."""
    protocol = setup.protocol
    if isinstance(protocol, PlainProtocol):
        return b""
    if isinstance(protocol, PaillierProtocol):
        return canonical_bytes(public_key_to_json(protocol.public_key))
    from ..protocols.ckks import CkksProtocol  # TenSEAL loads only when a CKKS round needs it

    if isinstance(protocol, CkksProtocol):
        return protocol.public_context
    raise ConfigurationError(f"protocol {protocol.name!r} is not a one-shot homomorphic protocol")


def finish(setup: ProtocolSetup, blobs: Mapping[str, bytes], *, round_id: int, length: int,
           dropped: Mapping[str, Stage]) -> AggregationResult:
    """Check ``blobs`` (client -> submission blob), add them, have the key holder decrypt.

    Raises :class:`~bfl_private.protocols.errors.TooManyDropouts` when no blob is valid or
    fewer than the key holder's minimum remain (the round then aborts, as in-process).
    """
    aggregate = getattr(setup.protocol, "aggregate_submissions", None)
    if aggregate is None:
        raise ConfigurationError(f"protocol {setup.protocol.name!r} is not a one-shot protocol")
    return aggregate(blobs, round_id=round_id, length=length, dropped=dropped)
