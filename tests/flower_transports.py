"""Loopback transports for the Flower tests: one records what passes, one tampers with it."""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from bfl_private.rounds.hospital import Hospital
from bfl_private.rounds.loopback import LoopbackTransport
from bfl_private.rounds.engine import Failure


class RecordingTransport(LoopbackTransport):
    """Keeps every request and, per stage, each node's state after answering it."""

    def __init__(self, hospitals: Mapping[int, Hospital], **kwargs: Any) -> None:
        super().__init__(hospitals, **kwargs)
        self.requests: dict[str, dict[int, dict[str, Any]]] = {}
        self.after: dict[str, dict[int, bytes | None]] = {}

    def exchange(self, stage: str, requests, *, round_id: int):  # type: ignore[no-untyped-def]
        self.requests[stage] = {n: dict(r) for n, r in requests.items()}
        replies = super().exchange(stage, requests, round_id=round_id)
        self.after[stage] = dict(self.states)
        return replies


class TamperingTransport(LoopbackTransport):
    """Flips the last byte of ``field`` in one hospital's ``stage`` reply on its way to the server."""

    def __init__(self, hospitals: Mapping[int, Hospital], *, victim: str, stage: str, field: str) -> None:
        super().__init__(hospitals)
        self.victim, self.stage, self.field = victim, stage, field

    def exchange(self, stage: str, requests, *, round_id: int):  # type: ignore[no-untyped-def]
        replies = super().exchange(stage, requests, round_id=round_id)
        for node, reply in replies.items():
            if stage == self.stage and not isinstance(reply, Failure) and self.hospitals[node].name == self.victim:
                data = bytearray(reply[self.field])
                data[-1] ^= 1
                replies[node] = {**reply, self.field: bytes(data)}
        return replies


def synced_federation(directory: Path) -> tuple[Any, dict[int, Hospital], Any, RecordingTransport]:
    """A federation (as ``test_flower_round.make_federation`` makes it) whose hospitals sync
    its ledger, after one honest round: the federation, its hospitals, the plan, and the
    transport that recorded the round."""
    from test_flower_round import make_federation

    from bfl_private.rounds.engine import RoundEngine

    federation, exported = make_federation(directory)
    hospitals = {node: Hospital.from_node_config({"hospital-dir": str(h.history_path.parent),
                                                  "ledger-dir": str(federation.directory)})
                 for node, h in exported.items()}
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    recorder = RecordingTransport(hospitals)
    assert RoundEngine(federation, plan, recorder).run().status != "aborted"
    return federation, hospitals, plan, recorder
