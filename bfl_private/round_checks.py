"""The checks of one round that validators run before they sign and auditors re-run later.

One implementation for both, so a validator's approval means exactly what the verifier
checks. Numpy, the protocols' public recomputation and the privacy accountant only:
no torch, no secret of any party.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .fedavg import next_global_model
from .ledger.errors import SemanticCheckError
from .privacy.accounting import PrivacyRecord, verify_claim
from .privacy.errors import PrivacyError
from .protocols.base import recompute_total
from .protocols.errors import ProtocolError


def check_aggregate(
    *,
    protocol: str,
    transcript: Mapping[str, Any],
    submissions: Mapping[str, bytes],
    claimed_total: np.ndarray,
    where: str,
) -> None:
    """Recompute the decoded total from the committed submissions; it must equal the claim bit for bit."""
    try:
        total = recompute_total(protocol, transcript, submissions)
    except ProtocolError as exc:
        raise SemanticCheckError(f"{where}: the {protocol} aggregate cannot be recomputed: {exc}") from exc
    total = np.asarray(total, dtype=np.float64)
    if total.shape != claimed_total.shape or not np.array_equal(total, claimed_total):
        if total.shape != claimed_total.shape:
            detail = f"shape {total.shape} recomputed, {claimed_total.shape} claimed"
        else:
            index = int(np.flatnonzero(total != claimed_total)[0])
            detail = f"coordinate {index}: recomputed {total[index]!r}, claimed {claimed_total[index]!r}"
        raise SemanticCheckError(f"{where}: aggregate differs from the recomputed sum ({detail})")


def check_model(
    *, base: np.ndarray, total: np.ndarray, new: np.ndarray, server_learning_rate: float, where: str
) -> None:
    """The new model must be exactly ``base + η · FedAvg(total)``."""
    try:
        expected = next_global_model(base, total, server_learning_rate=server_learning_rate)
    except ValueError as exc:
        raise SemanticCheckError(f"{where}: the model cannot be derived from the aggregate: {exc}") from exc
    if expected.shape != new.shape or not np.array_equal(expected, new):
        raise SemanticCheckError(f"{where}: the new model is not the previous model plus the averaged aggregate")


def check_epsilon_claims(
    histories: Mapping[str, Sequence[PrivacyRecord]], claims: Mapping[str, Any], *, where: str
) -> None:
    """Every claimed cumulative ε must equal the recomputation over the client's whole history."""
    for client, claimed in sorted(claims.items()):
        history = histories.get(client, ())
        if not history:
            if claimed != 0:
                raise SemanticCheckError(f"{where}: client {client!r} claims ε={claimed!r} with no recorded training")
            continue
        try:
            verify_claim(list(history), claimed, where=f"{where}, client {client!r}")
        except PrivacyError as exc:
            raise SemanticCheckError(str(exc)) from exc
