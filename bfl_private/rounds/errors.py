"""Named errors of the round's stage messages, inside the protocols' error tree.

A hospital that raises one of these answers the engine with an error reply (over Flower,
Flower's error reply) whose reason names the class and the message; the engine counts
that hospital as a dropout of the stage, exactly as if it had vanished.
"""
from __future__ import annotations

from ..protocols.errors import MalformedInput, ProtocolError, ReplayedMessage


class StageMessageError(MalformedInput):
    """A stage message that is malformed: a missing or mistyped field, a foreign round or
    federation, a round opening not signed by the coordinator, an unknown client."""


class RefusedPrivacyRecord(StageMessageError):
    """A signed submission whose privacy record is not the one the round's plan and genesis
    allow (σ, q, steps, C, δ, relation, accountant): posting it would understate ε."""


class PublicKeyMessageError(StageMessageError):
    """A Paillier public key or CKKS public context in an ``encrypt`` request that does not
    parse, holds a secret key, or is not the key material the signed round opening names.
    Refused before the hospital trains, so it costs no privacy budget."""


class OutOfOrderMessage(ReplayedMessage):
    """A stage message that does not follow the stage this hospital completed last
    (a replay, a skipped stage, or a stage of a round it never opened)."""


class HospitalConfigError(ProtocolError, ValueError):
    """A SuperNode's node config, key, genesis or data file that cannot be used."""
