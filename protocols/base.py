"""The interface every aggregation protocol implements, and the auditor's entry point.

A protocol turns the clients' float update vectors into protected submissions, lets an
aggregator that holds no client secret combine them, and returns the decoded sum of the
clients whose input made it in. Every protocol also publishes what a third party needs
to recompute that sum from the committed submissions alone:

* ``AggregationResult.submissions`` — one blob per received client input (the bytes the
  ledger commits to by CID). Blobs are safetensors or canonical JSON, never pickle.
* ``AggregationResult.transcript`` — a JSON-serialisable record (parameters, revealed
  seeds, decryption proofs, ...) with which :func:`recompute_total` reproduces ``total``.

The in-process ``aggregate`` runs every party of the protocol in one process (tests,
notebooks, the embedded federation); ``drop`` makes chosen clients stop answering from
a given stage on, so dropout handling is exercised by the same code path.
"""
from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np

from .errors import ConfigurationError, MalformedInput, ProtocolError, TooManyDropouts

Stage = Literal["advertise", "share", "mask", "unmask"]
STAGES: tuple[Stage, ...] = ("advertise", "share", "mask", "unmask")

# Protocol name -> module implementing
# ``recompute_from_submissions(transcript, submissions) -> float64 total``.
# Imported lazily so an auditor never loads TenSEAL unless a CKKS round needs it.
_RECOMPUTERS = {
    "plain": "bfl_private.protocols.plain",
    "masking": "bfl_private.protocols.masking",
    "paillier": "bfl_private.protocols.paillier",
    "ckks": "bfl_private.protocols.ckks",
}


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
    """JSON-serialisable public record from which ``recompute_total`` reproduces ``total``."""
    decryption_provable: bool = True
    """False where the final decoding cannot be checked publicly (CKKS)."""


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
    ) -> AggregationResult:
        """Run the protocol among ``updates``' clients and return the decoded sum."""


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
    """(submitters, dropped) of a one-message protocol such as HE, which needs no recovery:
    a client dropped before ``unmask`` never submits; one dropped at ``unmask`` already has."""
    drop = drop or {}
    dropped = tuple(sorted(c for c, stage in drop.items() if c in updates and stage != "unmask"))
    return [c for c in sorted(updates) if c not in dropped], dropped


def receive_submissions(
    blobs: Mapping[str, bytes], decode: Callable[[str, bytes], Any], *, round_id: int, drop: Mapping[str, Stage] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """Check every blob on receipt: (decoded, rejected with the reason). Raises
    TooManyDropouts when nothing valid arrived."""
    received: dict[str, Any] = {}
    rejected: dict[str, str] = {}
    for client, blob in blobs.items():
        try:
            received[client] = decode(client, blob)
        except ProtocolError as exc:
            rejected[client] = str(exc)
    if not received:
        exc = TooManyDropouts(f"round {round_id}: no valid submission among {len(blobs)} submitters",
                              stage="mask", required=1, available=0, dropped=dict(drop or {}))
        exc.received = dict(blobs)
        raise exc
    return received, rejected


def recompute_total(
    protocol: str, transcript: Mapping[str, Any], submissions: Mapping[str, bytes]
) -> np.ndarray:
    """Recompute a round's decoded total from public data only (the auditor's check).

    Raises a :class:`~bfl_private.protocols.errors.ProtocolError` subclass when the
    transcript or a submission is malformed or inconsistent.
    """
    try:
        module = importlib.import_module(_RECOMPUTERS[protocol])
    except KeyError:
        raise ConfigurationError(f"unknown protocol {protocol!r}; known: {sorted(_RECOMPUTERS)}") from None
    return module.recompute_from_submissions(transcript, submissions)
