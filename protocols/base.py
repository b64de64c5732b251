"""The interface every aggregation protocol implements, and the auditor's entry point.

A protocol turns the clients' float update vectors into protected submissions, lets an
aggregator that holds no client secret combine them, and returns the decoded sum of the
clients whose input made it in. Every protocol also publishes what a third party needs
to recompute that sum from the committed submissions alone:

* ``AggregationResult.submissions`` — one blob per received client input (the bytes the
  ledger commits to by CID). Blobs are safetensors or canonical JSON, never pickle.
* ``AggregationResult.transcript`` — a JSON record (parameters, revealed seeds, decryption
  proofs, ...) with which :func:`recompute_total` reproduces ``total``, and from which
  :func:`decoding_tolerance` gives how far a decoded coordinate may lie from the exact sum
  of the clients' clipped values (the encoding's error bound). Each protocol defines it as
  a typed record (``MaskingTranscript``, ``PaillierTranscript``, ``CkksTranscript``,
  ``PlainTranscript``) whose ``to_json()`` writes it and whose ``from_json`` parses it once
  in every reader. The result carries the JSON, not the record: it is what the ledger
  commits and what an auditor reads back, the one type all protocols share, so the round
  engine and the coordinator pass it on without knowing the protocol.

A client may skip our encoder and send anything in the protocol's domain. A decoded sum
that is not a sum of valid encodings raises :class:`InvalidAggregate` (with what had
arrived), never an unnamed exception: the round is refused and recorded.

The in-process ``aggregate`` runs every party of the protocol in one process (tests,
notebooks, the embedded federation); ``drop`` makes chosen clients stop answering from
a given stage on, so dropout handling is exercised by the same code path.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Protocol

import numpy as np
from safetensors.numpy import load as load_safetensors

from .errors import (
    ConfigurationError,
    HeadroomExceeded,
    InvalidAggregate,
    MalformedInput,
    ProtocolError,
    SlotOverflow,
    TooManyDropouts,
)

Stage = Literal["advertise", "share", "mask", "unmask"]
STAGES: tuple[Stage, ...] = ("advertise", "share", "mask", "unmask")

# Protocol name -> module implementing
# ``recompute_from_submissions(transcript, submissions) -> float64 total``,
# ``decoding_tolerance(transcript) -> float`` and ``TRANSCRIPT``, its transcript record class.
# Imported lazily so an auditor never loads TenSEAL unless a CKKS round needs it.
_RECOMPUTERS = {
    "plain": "bfl_private.protocols.plain",
    "masking": "bfl_private.protocols.masking",
    "paillier": "bfl_private.protocols.paillier",
    "ckks": "bfl_private.protocols.ckks",
}


class Transcript(Protocol):
    """What every protocol's typed transcript record offers a reader that does not know the protocol."""

    @property
    def summed(self) -> tuple[str, ...]:
        """The clients whose input is in the total (masking's survivors, the others' included)."""
        ...

    def to_json(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AggregationResult:
    """The outcome of one aggregation."""

    protocol: str
    total: np.ndarray
    """Decoded float64 sum of the included clients' (clipped, encoded) update vectors."""
    included: tuple[str, ...]
    """Clients whose input is in ``total``, sorted."""
    dropped: tuple[str, ...] = ()
    """Clients that stopped answering before their input could be counted."""
    rejected: Mapping[str, str] = field(default_factory=dict)
    """Clients whose submission was refused on receipt, with the reason."""
    submissions: Mapping[str, bytes] = field(default_factory=dict)
    """The protected input of every included client, as committed to the ledger."""
    rejected_submissions: Mapping[str, bytes] = field(default_factory=dict)
    """What each rejected client sent: refused, but its sender has spent privacy by sending it."""
    transcript: Mapping[str, Any] = field(default_factory=dict)
    """The protocol's transcript record as JSON, from which ``recompute_total`` reproduces ``total``."""
    decryption_provable: bool = True
    """False where the final decoding cannot be checked publicly (CKKS)."""


@dataclass(frozen=True)
class ForgedInput:
    """What a client that skips our encoder sends in place of its protected update.

    Exactly one of: ``message``, any bytes sent as its submission (masking: its masked-input
    message; HE and plain: its submission blob); or ``values``, anything in the protocol's
    input domain sent without clipping or encoding (masking: uint32 levels; Paillier:
    plaintext integers in [0, n), one per packed ciphertext; CKKS and plain: float64 values).
    The protocols' own ``aggregate`` and the demo's forging hospitals
    (``bfl_private.simulated_hospitals``) simulate malicious clients with it; a deployment
    receives such inputs over the wire. Either way they go through the same receipt checks.
    """

    message: bytes | None = None
    values: np.ndarray | tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if (self.message is None) == (self.values is None):
            raise ConfigurationError("a forged input is either a message or values, not both or neither")


def check_forged(forged: Mapping[str, ForgedInput] | None, updates: Mapping[str, np.ndarray]) -> dict[str, ForgedInput]:
    """``forged`` as a dict whose clients are all among ``updates``' (whose vectors they replace)."""
    forged = dict(forged or {})
    unknown = sorted(set(forged) - set(updates))
    if unknown:
        raise MalformedInput(f"forged inputs name clients that are not in the round: {unknown}")
    return forged


class AggregationProtocol(ABC):
    """One secure (or plain) summation protocol."""

    name: ClassVar[str]

    @abstractmethod
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
        """Run the protocol among ``updates``' clients and return the decoded sum.

        ``forged[c]`` replaces what client c sends (its vector in ``updates`` is ignored).
        Raises :class:`RoundAbort` (with ``received``) when no sum can be produced.
        """


def load_submission_tensors(blob: bytes | memoryview, *, client: str) -> dict[str, np.ndarray]:
    """The tensors of a client's safetensors submission blob, or MalformedInput naming it.

    Whatever the bytes: safetensors itself raises more than its own error on input our
    encoder would never make (a KeyError for a dtype numpy lacks, such as BF16; TypeError,
    OverflowError on absurd headers), and a client's bytes must never crash a round."""
    try:
        return load_safetensors(bytes(blob))
    except Exception as exc:  # noqa: BLE001 - any failure to parse a peer's bytes is that peer's fault
        raise MalformedInput(f"submission of {client!r} is not a safetensors blob: "
                             f"{type(exc).__name__}: {exc}") from exc


def check_updates(updates: Mapping[str, np.ndarray]) -> int:
    """Validate a client -> vector mapping and return the common length.

    Every vector must be a finite 1-D float array of one common length.
    """
    if not updates:
        raise MalformedInput("no client updates to aggregate")
    length: int | None = None
    for client, vector in updates.items():
        v = np.asarray(vector)
        if v.ndim != 1 or not np.issubdtype(v.dtype, np.floating):
            raise MalformedInput(f"update of client {client!r}: expected a 1-D float vector, got {v.dtype} {v.shape}")
        if length is None:
            length = v.shape[0]
        elif v.shape[0] != length:
            raise MalformedInput(f"update of client {client!r} has length {v.shape[0]}, expected {length}")
        if not np.all(np.isfinite(v)):
            raise MalformedInput(f"update of client {client!r} has non-finite values")
    assert length is not None
    return length


def one_shot_submitters(
    updates: Mapping[str, np.ndarray], drop: Mapping[str, Stage] | None
) -> tuple[list[str], tuple[str, ...]]:
    """(submitters, dropped) of a one-message protocol (HE, plain), which needs no recovery:
    its one message goes where masking's masked input does, so a client dropped at ``mask``
    or before never submits, and one dropped only later (``acknowledge``, ``unmask``) already has."""
    drop = drop or {}
    last = STAGES.index("mask")
    dropped = tuple(sorted(c for c, stage in drop.items() if c in updates and STAGES.index(stage) <= last))
    return [c for c in sorted(updates) if c not in dropped], dropped


def receive_submissions(
    blobs: Mapping[str, bytes],
    decode: Callable[[str, bytes], Any],
    *,
    round_id: int,
    drop: Mapping[str, Stage] | None,
    fingerprint: Callable[[Any], bytes] = lambda decoded: b"",
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check every blob on receipt: (decoded, rejected with the reason). Raises
    TooManyDropouts when nothing valid arrived.

    Submissions whose decoded content is the same (``fingerprint``, e.g. the ciphertexts
    whatever header wraps them) are all rejected: one replays the other, and which is the
    original cannot be told here (summing it twice would double one client's weight)."""
    decoded: dict[str, Any] = {}
    rejected: dict[str, str] = {}
    for client, blob in blobs.items():
        try:
            decoded[client] = decode(client, blob)
        except ProtocolError as exc:
            rejected[client] = str(exc)
        except Exception as exc:  # noqa: BLE001 - a peer's bytes must never crash the round
            rejected[client] = f"submission of {client!r} does not decode: {type(exc).__name__}: {exc}"
    content = {c: fingerprint(value) or bytes(blobs[c]) for c, value in decoded.items()}
    by_content: dict[bytes, list[str]] = {}
    for client in sorted(decoded):
        by_content.setdefault(content[client], []).append(client)
    received: dict[str, Any] = {}
    for client, value in decoded.items():
        copies = [c for c in by_content[content[client]] if c != client]
        if copies:
            rejected[client] = f"submission of {client!r} repeats the content of {copies}'s: a replayed input"
        else:
            received[client] = value
    if not received:
        exc = TooManyDropouts(f"round {round_id}: no valid submission among {len(blobs)} submitters",
                              stage="mask", required=1, available=0, dropped=dict(drop or {}))
        exc.received = dict(blobs)
        raise exc
    return received, rejected


def _module(protocol: str) -> Any:
    try:
        return importlib.import_module(_RECOMPUTERS[protocol])
    except KeyError:
        raise ConfigurationError(f"unknown protocol {protocol!r}; known: {sorted(_RECOMPUTERS)}") from None


def recompute_total(
    protocol: str, transcript: Mapping[str, Any], submissions: Mapping[str, bytes]
) -> np.ndarray:
    """Recompute a round's decoded total from public data only (the auditor's check).

    Raises a :class:`~bfl_private.protocols.errors.ProtocolError` subclass when the
    transcript or a submission is malformed or inconsistent.
    """
    return _module(protocol).recompute_from_submissions(transcript, submissions)


def parse_transcript(protocol: str, transcript: Any, *, where: str) -> Transcript:
    """A round's committed transcript as its protocol's typed record; a ProtocolError
    (MalformedInput naming ``where``) when it is not one."""
    record: Transcript = _module(protocol).TRANSCRIPT.from_json(transcript, where=where)
    return record


def decoding_tolerance(protocol: str, transcript: Mapping[str, Any]) -> float:
    """The largest distance, per coordinate, between a round's decoded total and the exact
    sum of its included clients' clipped values when every client encoded honestly
    (fixed-point: one step per client; CKKS: its noise bound; plain: float32 rounding)."""
    return float(_module(protocol).decoding_tolerance(transcript))


def refused_by_key_holder(exc: ProtocolError, *, round_id: int, received: Mapping[str, bytes]) -> InvalidAggregate:
    """A key holder's refusal to decrypt (a replay it saw, a sum that differs) as a round abort."""
    refused = InvalidAggregate(f"round {round_id}: the key holder refused to decrypt: {type(exc).__name__}: {exc}",
                               stage="decrypt")
    refused.received = dict(received)
    return refused


def decode_or_refuse(
    decode: Callable[[], np.ndarray], *, round_id: int, received: Mapping[str, bytes]
) -> np.ndarray:
    """Run a round's final decoding; a sum that is not one of valid encodings (a slot or
    level past what the included clients can reach) is refused as :class:`InvalidAggregate`
    carrying ``received``, the inputs whose senders have spent privacy."""
    try:
        return decode()
    except (MalformedInput, SlotOverflow, HeadroomExceeded) as exc:
        refused = InvalidAggregate(
            f"round {round_id}: the decoded sum is not a sum of valid encodings ({exc}); some "
            "client skipped the encoder, and secure aggregation hides which", stage="decode")
        refused.received = dict(received)
        raise refused from exc
