"""Stand-ins for parties in round tests: a validator that signs anything, scripted dropouts."""
from __future__ import annotations

from bfl_private.ledger.entries import ATTESTATION, ROUND_CLOSE, Entry


def rubber_stamp(self, entries, ledger):
    """A colluding validator's attestation: accept, without checking anything."""
    close = next(e for e in entries if e.type == ROUND_CLOSE)
    return Entry.create(self.identity, ATTESTATION, close.round, {
        "validator": self.identity.name, "model_cid": close.payload["new_model_cid"],
        "quality_ppm": 1_000_000, "verdict": "accept"})


class ScriptedDrops:
    """A stand-in for the round's random generator: the named clients vanish at ``stage``."""

    def __init__(self, participants: list[str], gone: set[str], stage_index: int) -> None:
        self._draws = iter(0.0 if c in gone else 1.0 for c in participants)
        self._stage_index = stage_index

    def random(self) -> float:
        return next(self._draws)

    def integers(self, high: int) -> int:
        return self._stage_index
