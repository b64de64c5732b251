"""The aggregator's and key holder's side of a one-shot (Paillier, CKKS) round whose
submissions were encrypted elsewhere, by the hospitals.

In-process, :meth:`PaillierProtocol.aggregate` and :meth:`CkksProtocol.aggregate` encrypt
every client's update themselves and then check, add and decrypt. Over Flower the
hospitals encrypt on their own machines (with the same client step,
``encrypt_update``), so the ServerApp runs only the second half: every blob is checked on
receipt with the protocol's own ``decode_submission`` through
:func:`~bfl_private.protocols.base.receive_submissions` (a blob that does not decode is
*rejected*, as in-process), the aggregator adds the ciphertexts, and the federation's key
holder (built by :func:`~bfl_private.protocol_setup.build_protocol`, exactly as in-process)
decrypts only the sum it recomputes itself from the committed submissions.

The transcript has the same fields as the in-process one, so the auditor's
``recompute_from_submissions`` checks it unchanged. The protocol modules have no entry
point for "finish with these blobs", so the few lines that assemble the transcript
mirror the end of their ``aggregate``; ``tests/test_flower_he.py`` compares both
transcripts' fields so the two cannot drift apart unnoticed.
"""
from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import TYPE_CHECKING

from ..protocol_setup import ProtocolSetup
from ..protocols.base import AggregationResult, Stage, receive_submissions
from ..protocols.errors import ConfigurationError
from ..protocols.paillier import PaillierProtocol

if TYPE_CHECKING:  # TenSEAL loads only when a CKKS round needs it
    from ..protocols.ckks import CkksProtocol


def public_key_material(setup: ProtocolSetup) -> bytes:
    """What hospitals receive: the Paillier public key as RFC 8785 JSON, or the serialised
    CKKS public context (public key only). Canonical bytes, never a pickle."""
    protocol = setup.protocol
    if isinstance(protocol, PaillierProtocol):
        from ..ledger.canonical import canonical_bytes
        from ..protocols.paillier import public_key_to_json

        return canonical_bytes(public_key_to_json(protocol.public_key))
    from ..protocols.ckks import CkksProtocol

    if isinstance(protocol, CkksProtocol):
        return protocol.public_context
    raise ConfigurationError(f"protocol {protocol.name!r} is not a one-shot homomorphic protocol")


def finish(setup: ProtocolSetup, blobs: Mapping[str, bytes], *, round_id: int, length: int,
           dropped: Mapping[str, Stage]) -> AggregationResult:
    """Check ``blobs`` (client -> submission blob), add them, have the key holder decrypt.

    Raises :class:`~bfl_private.protocols.errors.TooManyDropouts` when no blob is valid or
    fewer than the key holder's minimum remain (the round then aborts, as in-process).
    """
    protocol = setup.protocol
    if isinstance(protocol, PaillierProtocol):
        return _finish_paillier(protocol, blobs, round_id=round_id, length=length, dropped=dropped)
    from ..protocols.ckks import CkksProtocol

    if isinstance(protocol, CkksProtocol):
        return _finish_ckks(protocol, blobs, round_id=round_id, length=length, dropped=dropped)
    raise ConfigurationError(f"protocol {protocol.name!r} is not a one-shot homomorphic protocol")


def _finish_paillier(protocol: PaillierProtocol, blobs: Mapping[str, bytes], *, round_id: int, length: int,
                     dropped: Mapping[str, Stage]) -> AggregationResult:
    from ..protocols.paillier import add, decode_submission, public_key_to_json

    layout = protocol.layout(length)
    received, rejected = receive_submissions(
        blobs, lambda client, blob: decode_submission(blob, public_key=protocol.public_key, layout=layout,
                                                      client=client),
        round_id=round_id, drop=dropped,
    )
    included = sorted(received)
    claimed = add(protocol.public_key, (received[c] for c in included))
    submissions = {c: blobs[c] for c in included}
    decryption = protocol.key_holder.decrypt_aggregate(submissions, layout=layout, claimed=claimed)
    total = protocol.codec.decode_sum(layout.unpack(decryption.plaintexts, summands=len(included)), len(included))
    transcript = {  # the fields of PaillierProtocol.aggregate's transcript
        "protocol": protocol.name,
        "round": round_id,
        "codec": protocol.codec.to_json(),
        "public_key": public_key_to_json(protocol.public_key),
        "layout": layout.to_json(),
        "included": included,
        "aggregate": [format(c, "x") for c in decryption.aggregate],
        "plaintexts": [format(m, "x") for m in decryption.plaintexts],
        "proofs": [format(r, "x") for r in decryption.proofs],
    }
    return AggregationResult(protocol=protocol.name, total=total, included=tuple(included),
                             dropped=tuple(sorted(dropped)), rejected=rejected, submissions=submissions,
                             transcript=transcript)


def _finish_ckks(protocol: CkksProtocol, blobs: Mapping[str, bytes], *, round_id: int, length: int,
                 dropped: Mapping[str, Stage]) -> AggregationResult:
    from ..protocols.ckks import (  # _digests: the claim's own hashing
        _digests,
        add,
        decode_submission,
    )

    received, rejected = receive_submissions(
        blobs, lambda client, blob: decode_submission(blob, context=protocol.context,
                                                      public_context=protocol.public_context, length=length,
                                                      client=client),
        round_id=round_id, drop=dropped,
    )
    included = sorted(received)
    claimed = _digests(add([received[c] for c in included]))
    submissions = {c: blobs[c] for c in included}
    decryption = protocol.key_holder.decrypt_aggregate(submissions, length=length, max_summands=protocol.max_summands,
                                                       claimed_sha256=claimed)
    transcript = {  # the fields of CkksProtocol.aggregate's transcript
        "protocol": protocol.name,
        "round": round_id,
        "parameters": protocol.parameters.to_json(),
        "public_context": base64.b64encode(protocol.public_context).decode("ascii"),
        "clip": protocol.clip,
        "max_summands": protocol.max_summands,
        "length": length,
        "included": included,
        "aggregate_sha256": list(decryption.aggregate_sha256),
        "decrypted_total": decryption.total.tolist(),
        "error_bound": protocol.parameters.error_bound(summands=len(included), clip=protocol.clip),
        "decryption_provable": False,
    }
    return AggregationResult(protocol=protocol.name, total=decryption.total, included=tuple(included),
                             dropped=tuple(sorted(dropped)), rejected=rejected, submissions=submissions,
                             transcript=transcript, decryption_provable=False)
