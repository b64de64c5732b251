"""What a hospital checks again when its update leaves, and who may take a seat.

A masking hospital trains when the round opens (``advertise`` or ``join``) and releases
the update at ``mask``. Its privacy history is one file, but each Flower run keeps its own
Context.state, so a spend can be recorded in between; the budget is then checked again at
release, under a lock. A seat goes to a node only for a message its hospital signed."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import json

import pytest
from flower_transports import RecordingTransport
from test_flower_round import N, make_federation

from bfl_private.participant_checks import OverBudget
from bfl_private.privacy.accounting import recorded_epsilon
from bfl_private.protocols.errors import ProtocolError
from bfl_private.rounds.engine import RoundEngine
from bfl_private.rounds.hospital import RoundState
from bfl_private.rounds.stages import JOIN


class HeldAtMask(RecordingTransport):
    """Records one node's mask request and keeps it from that node (the server holds it back)."""

    def __init__(self, hospitals, *, held: int) -> None:  # type: ignore[no-untyped-def]
        super().__init__(hospitals)
        self.held = held
        self.held_request: dict[str, Any] = {}

    def exchange(self, stage: str, requests, *, round_id: int):  # type: ignore[no-untyped-def]
        if stage == "mask":
            self.held_request = dict(requests[self.held])
            requests = {n: r for n, r in requests.items() if n != self.held}
        return super().exchange(stage, requests, round_id=round_id)


def test_a_spend_recorded_between_the_opening_and_mask_is_counted_before_release(tmp_path: Path) -> None:
    """Run 1 opens round 1 at the hospital and holds its mask request back; meanwhile another
    run of the same hospital (its own Context.state) records a spend in the one history file;
    run 1's mask would then take it past its budget, so nothing is released."""
    federation, hospitals = make_federation(tmp_path, budget=1.0)
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    node = min(hospitals)
    hospital = hospitals[node]
    run1 = HeldAtMask(hospitals, held=node)
    assert RoundEngine(federation, plan, run1).run().status != "aborted"
    trained_state, held_mask = run1.states[node], run1.held_request
    assert hospital.history() == []  # trained at advertise, nothing released
    other_run = RoundState.from_bytes(trained_state).privacy  # the same record, released by the other run
    hospital.history_path.write_text(json.dumps([other_run]))
    spent = hospital.history()
    assert recorded_epsilon(spent) <= 1.0 < recorded_epsilon(spent + spent)
    with pytest.raises(OverBudget, match="trained when the round opened"):
        hospital.handle(held_mask, trained_state)
    assert hospital.history() == spent  # nothing recorded, nothing sent
    refused = hospital.participation()["refused"][-1]
    assert refused["stage"] == "mask" and refused["error"] == "OverBudget"
    federation.close()


def test_an_unchanged_history_releases_without_loading_the_accountant_again(tmp_path: Path) -> None:
    """The common case: the history is as the opening's budget check read it, so mask releases."""
    federation, hospitals = make_federation(tmp_path, budget=50.0)
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    node = min(hospitals)
    run1 = HeldAtMask(hospitals, held=node)
    RoundEngine(federation, plan, run1).run()
    reply, _ = hospitals[node].handle(run1.held_request, run1.states[node])
    assert set(reply) == {"masked-input", "submission"} and len(hospitals[node].history()) == 1
    federation.close()


class Squatter:
    """A node that answers the first stage in another hospital's name, with garbage."""

    def __init__(self, victim: str) -> None:
        self.name = f"squatter-for-{victim}"
        self.victim = victim

    def handle(self, fields: dict[str, Any], state: bytes | None) -> tuple[dict[str, Any], None]:
        return {"client": self.victim, "advertisement": bytes(200)}, None


def test_a_node_claiming_a_seat_with_a_message_the_hospital_did_not_sign_takes_nothing(tmp_path: Path) -> None:
    federation, hospitals = make_federation(tmp_path)
    plan = federation.plan(epsilon=1.0, rounds=1, skip_exhausted=False)
    victim = hospitals[max(hospitals)].name
    nodes = {1: Squatter(victim), **hospitals}  # heard first
    lines: list[str] = []
    summary = RoundEngine(federation, plan, RecordingTransport(nodes), log=lines.append).run()
    assert victim in summary.survivors and len(summary.survivors) == N
    assert any("node 1 claims" in line and "did not sign" in line for line in lines)
    federation.close()


def test_a_hostile_advertisement_list_at_join_costs_no_training(tmp_path: Path) -> None:
    federation, hospitals = make_federation(tmp_path)
    plan = federation.plan(epsilon=1.0, rounds=3, skip_exhausted=False)
    transport = RecordingTransport(hospitals)
    first = RoundEngine(federation, plan, transport)
    first.run()
    ended = dict(transport.states)
    RoundEngine(federation, plan, transport, ahead=first.advertised_ahead).run()
    node = min(hospitals)
    join = transport.requests[JOIN][node]
    hospital = hospitals[node]
    spent, opened = len(hospital.history()), hospital.participation()["opened"]
    # the same round's join, replayed on the state that made its keys, with a neighbour's advertisement flipped
    history = hospital.history_path.read_bytes()
    participation = hospital.participation_path.read_bytes()
    hospital.history_path.write_bytes(b"[]")  # as before round 2 released, so the opening checks pass
    records = json.loads(participation)
    records["opened"] = [r for r in records["opened"] if r != join["round"]]
    records["submitted"] = [r for r in records["submitted"] if r != join["round"]]
    hospital.participation_path.write_text(json.dumps(records))
    adverts = list(join["advertisements"])
    adverts[0] = adverts[0][:-1] + bytes([adverts[0][-1] ^ 1])
    trained: list[int] = []
    hospital._train = lambda *args: trained.append(1)  # type: ignore[method-assign]
    try:
        with pytest.raises(ProtocolError):
            hospital.handle({**join, "advertisements": adverts}, ended[node])
        assert trained == []
    finally:
        hospital.history_path.write_bytes(history)
        hospital.participation_path.write_bytes(participation)
        del hospital._train
    assert len(hospital.history()) == spent and hospital.participation()["opened"] == opened
    federation.close()
