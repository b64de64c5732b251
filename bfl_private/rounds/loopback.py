"""The in-process transport: every hospital in this process, messages passed as records.

It runs the very code a SuperNode runs (:meth:`Hospital.handle`, with the state kept
between stages as Flower keeps ``Context.state``): ``bfl-private round``, the tests and
the benchmarks drive the round engine through it without network. A hospital listed in
``drop`` stops answering from that stage on (stages are ordered by
:data:`~.stages.STAGE_POSITION`, so in a one-shot round a hospital dropped at ``mask`` or
earlier never answers ``encrypt``); one whose handler raises anything answers with a
:class:`Failure` carrying the error's name and message, as Flower's ClientApp does: a
failing hospital is a dropout, never a crash of the round.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .hospital import Hospital
from .engine import Failure
from .stages import STAGE_POSITION


class LoopbackTransport:
    def __init__(self, hospitals: Mapping[int, Hospital], *, drop: Mapping[str, str] | None = None) -> None:
        self.hospitals = dict(hospitals)
        self.states: dict[int, bytes | None] = {node: None for node in hospitals}
        self.drop = dict(drop or {})

    def nodes(self) -> list[int]:
        return sorted(self.hospitals)

    def _answers(self, node: int, stage: str) -> bool:
        gone = self.drop.get(self.hospitals[node].name)
        return gone is None or STAGE_POSITION[stage] < STAGE_POSITION[gone]

    def exchange(self, stage: str, requests: Mapping[int, Mapping[str, Any]], *,
                 round_id: int) -> dict[int, Mapping[str, Any] | Failure]:
        replies: dict[int, Mapping[str, Any] | Failure] = {}
        for node, fields in requests.items():
            if not self._answers(node, stage):
                continue
            try:
                reply, self.states[node] = self.hospitals[node].handle(dict(fields), self.states[node])
            except Exception as exc:  # noqa: BLE001 - as over Flower: any failure of a node is its error reply
                replies[node] = Failure(f"{type(exc).__name__}: {exc}")
                continue
            replies[node] = reply
        return replies
