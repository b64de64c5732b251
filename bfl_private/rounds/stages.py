"""The stages of a private round and the fields each message carries.

One message exchange per protocol stage (over Flower, one Flower message each). Masking (Bonawitz et al., CCS 2017, with
the consistency check): ``advertise`` (the hospital checks the opening, trains with DP-SGD
and keeps its encoded input, then advertises its round keys) → ``share`` → ``mask`` (the
masked input and the signed submission) → ``acknowledge`` → ``unmask``. Training in the
first stage leaves the four later ones cryptography only (light processes over Flower).

Keys made ahead: each ``unmask`` reply also carries the hospital's signed advertisement
of fresh round keys for the next round (:class:`~.masking_state.KeysAhead`). When every
participant of the next round advertised ahead at its own party number, that round skips
``advertise``: its first exchange is ``join`` (the opening, the beacon, the model and the
neighbours' advertisements; the hospital checks, trains and sends its shares), so a
round takes four exchanges, as Flower's SecAgg+ does, and keeps the consistency check.
Otherwise the round starts with ``advertise``, and a hospital holding keys made ahead for
it answers with that same advertisement (never a second key pair for one round). Paillier and CKKS are one-shot: a single ``encrypt``
stage carries the round opening, the key holder's public key material and the model, and
the hospital answers with its signed, encrypted update (local DP-SGD first); the key
holder stays with the ServerApp and decrypts only the sum. Every message is one ``ConfigRecord`` named
:data:`RECORD` holding the stage, the federation id, the round and the stage's fields;
protocol messages travel as their canonical bytes (:mod:`bfl_private.protocols.masking_messages`),
ledger entries as their RFC 8785 bytes, the model as its safetensors blob. Nothing is
pickled, and each field is checked for presence and type before it is parsed.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import StageMessageError

RECORD = "bfl"
"""Name of the ConfigRecord in every message's RecordDict."""

STAGES = ("advertise", "share", "mask", "acknowledge", "unmask")
"""The masking round's stages, in order."""

JOIN = "join"
"""The first stage of a masking round whose participants all advertised ahead: it stands
for ``advertise`` and ``share`` (the hospital ends it where ``share`` ends)."""

HE_STAGES = ("encrypt",)
"""The stages of a one-shot round: Paillier, CKKS, and plain (the unprotected baseline, whose
``encrypt`` sends the payload in the clear)."""

PROTOCOL_STAGES: Mapping[str, tuple[str, ...]] = {"masking": STAGES + (JOIN,), "paillier": HE_STAGES,
                                                   "ckks": HE_STAGES, "plain": HE_STAGES}
"""The protocols a round runs and their stages."""

ALL_STAGES = STAGES + (JOIN,) + HE_STAGES

TRAINING_STAGES = ("advertise", JOIN, "encrypt")
"""The stages in which a hospital trains (DP-SGD) before it answers: they get the run's
``train-timeout``, the others the much shorter ``stage-timeout``."""

STAGE_POSITION: Mapping[str, int] = {**{s: i for i, s in enumerate(STAGES)}, JOIN: STAGES.index("share"),
                                     "encrypt": STAGES.index("mask")}
"""Where each stage falls in a round, for dropouts "from stage X on": ``encrypt`` is where
masking's ``mask`` is (the hospital sends its protected update), so a hospital
gone at ``advertise``, ``share`` or ``mask`` never submits in an HE round and one gone only
at ``acknowledge`` or ``unmask`` already has, as :func:`bfl_private.protocols.base.one_shot_submitters` counts it."""

MESSAGE_TYPES = {
    "advertise": "train.advertise",  # the stage in which the hospital trains with DP-SGD
    JOIN: "train.join",  # or this one, when it advertised ahead
    "share": "query.share",
    "mask": "query.mask",
    "acknowledge": "query.acknowledge",
    "unmask": "query.unmask",
    "encrypt": "train.encrypt",  # DP-SGD, then the update encrypted under the key holder's public key
}

_HEADER = {"stage": str, "federation": str, "round": int}

REQUEST_FIELDS: Mapping[str, Mapping[str, type]] = {
    # round-beacon: the round_beacon entry on round-open; the hospital checks its validator
    # signatures and derives the seed itself (bfl_private.ledger.beacon), never taking one.
    "advertise": {"round-open": bytes, "round-beacon": bytes, "length": int, "model": bytes},
    "share": {"advertisements": list},
    JOIN: {"round-open": bytes, "round-beacon": bytes, "length": int, "model": bytes, "advertisements": list},
    "mask": {"delivery": bytes},
    "acknowledge": {"survivors": bytes},
    "unmask": {"signatures": bytes},
    # public-key: Paillier, the RFC 8785 JSON of the public key (n, key_id); CKKS, TenSEAL's
    # serialised public context (public key only). Both must be what round-open names.
    # Plain: empty.
    "encrypt": {"round-open": bytes, "round-beacon": bytes, "public-key": bytes, "model": bytes},
}

REPLY_FIELDS: Mapping[str, Mapping[str, type]] = {
    "advertise": {"client": str, "advertisement": bytes},
    "share": {"shares": bytes},
    JOIN: {"shares": bytes},
    "mask": {"masked-input": bytes, "submission": bytes},
    "acknowledge": {"acknowledgement": bytes},
    # advertisement-ahead: the signed advertisement of keys for the next round (see KeysAhead)
    "unmask": {"unmask": bytes, "advertisement-ahead": bytes},
    # ciphertext: the submission blob exactly as the ledger commits it (its CID is the
    # signed submission's blob_cid)
    "encrypt": {"client": str, "ciphertext": bytes, "submission": bytes},
}


def request(stage: str, *, federation: str, round_id: int, **fields: Any) -> dict[str, Any]:
    """A stage request's fields (the ConfigRecord's content), checked against the spec."""
    payload = {"stage": stage, "federation": federation, "round": round_id,
               **{k.replace("_", "-"): v for k, v in fields.items()}}
    return check_fields(payload, REQUEST_FIELDS[stage], where=f"{stage} request")


def check_fields(payload: Mapping[str, Any], spec: Mapping[str, type], *, where: str,
                 header: bool = True) -> dict[str, Any]:
    """``payload`` must hold exactly the spec's fields (plus the header), each of its type."""
    expected = {**(_HEADER if header else {}), **spec}
    if not isinstance(payload, Mapping):
        raise StageMessageError(f"{where}: expected a record of fields, got {type(payload).__name__}")
    missing, extra = sorted(set(expected) - set(payload)), sorted(set(payload) - set(expected))
    if missing or extra:
        raise StageMessageError(f"{where}: fields {sorted(payload)}; missing {missing}, unexpected {extra}")
    for name, kind in expected.items():
        value = payload[name]
        if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
            raise StageMessageError(f"{where}: field {name!r} must be an integer, got {type(value).__name__}")
        if not isinstance(value, kind):
            raise StageMessageError(f"{where}: field {name!r} must be {kind.__name__}, got {type(value).__name__}")
        if isinstance(value, list) and not all(isinstance(item, bytes) for item in value):
            raise StageMessageError(f"{where}: field {name!r} must be a list of bytes")
    return dict(payload)


def check_reply(stage: str, payload: Mapping[str, Any], *, where: str) -> dict[str, Any]:
    return check_fields(payload, REPLY_FIELDS[stage], where=where, header=False)
