"""Keys made ahead: every ``unmask`` reply carries the hospital's signed advertisement of
fresh keys for the next round, and a round whose participants all advertised ahead takes
four exchanges (join, mask, acknowledge, unmask) with every check of the five-stage round.
Anything short of that falls back to ``advertise``, where a hospital re-sends the keys it
made ahead, never a second key pair for one round."""
from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from flower_transports import RecordingTransport
from test_flower_round import N, make_federation

from bfl_private.audit import audit
from bfl_private.ledger.entries import ROUND_CLOSE
from bfl_private.rounds.engine import Failure, RoundEngine
from bfl_private.rounds.errors import OutOfOrderMessage
from bfl_private.rounds.stages import JOIN, STAGES


class StageLog(RecordingTransport):
    """Records the stage of every exchange, in order, and each node's reply per stage."""

    def __init__(self, hospitals: Mapping[int, Any]) -> None:
        super().__init__(hospitals)
        self.stages: list[str] = []
        self.replies: dict[str, dict[int, Any]] = {}

    def exchange(self, stage: str, requests, *, round_id: int):  # type: ignore[no-untyped-def]
        self.stages.append(stage)
        replies = super().exchange(stage, requests, round_id=round_id)
        self.replies[stage] = dict(replies)
        return replies


@pytest.fixture
def federation(tmp_path: Path):
    federation, hospitals = make_federation(tmp_path)
    plan = federation.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    transport = StageLog(hospitals)
    first = RoundEngine(federation, plan, transport)
    assert first.run().status != "aborted"
    assert transport.stages == list(STAGES)
    yield federation, hospitals, plan, transport, first.advertised_ahead
    federation.close()


def _survivors(federation, round_id: int) -> list[str]:
    (close,) = [e for e in federation.ledger.entries() if e.round == round_id and e.type == ROUND_CLOSE]
    return close.payload["survivors"]


def test_a_round_whose_hospitals_all_advertised_ahead_takes_four_exchanges_and_verifies(federation) -> None:
    fed, hospitals, plan, transport, ahead = federation
    assert sorted(ahead) == sorted(plan.clients)
    transport.stages.clear()
    engine = RoundEngine(fed, plan, transport, ahead=ahead)
    summary = engine.run()
    assert transport.stages == [JOIN, "mask", "acknowledge", "unmask"]
    assert summary.status != "aborted" and len(summary.survivors) == N == len(_survivors(fed, summary.round))
    transport.stages.clear()  # and again: keys made ahead in a joined round work too
    third = RoundEngine(fed, plan, transport, ahead=engine.advertised_ahead).run()
    assert transport.stages == [JOIN, "mask", "acknowledge", "unmask"] and len(third.survivors) == N
    report = audit(fed.directory)  # the transcript's advertisements, made ahead, verify as any other
    assert report.ok, report.to_json()


def test_advertise_after_keys_made_ahead_gets_the_same_advertisement(federation) -> None:
    """A server that asks for advertise anyway gets the advertisement made ahead, byte for
    byte: one round never has two signed key pairs of one hospital to show different peers."""
    fed, hospitals, plan, transport, ahead = federation
    transport.stages.clear()
    summary = RoundEngine(fed, plan, transport).run()  # no ahead: the engine asks for advertise
    assert transport.stages == list(STAGES)
    sent = {hospitals[node].name: reply["advertisement"] for node, reply in transport.replies["advertise"].items()}
    assert sent == {client: advert for client, (_, advert) in ahead.items()}
    assert len(summary.survivors) == N


@pytest.mark.parametrize("flaw", ["tampered", "missing", "node gone"])
def test_an_unusable_advertisement_made_ahead_falls_back_to_advertise(federation, flaw: str) -> None:
    fed, hospitals, plan, transport, ahead = federation
    victim = sorted(ahead)[1]
    node, advert = ahead[victim]
    ahead = dict(ahead)
    if flaw == "tampered":
        ahead[victim] = (node, advert[:-1] + bytes([advert[-1] ^ 1]))
    elif flaw == "missing":
        del ahead[victim]
    else:
        ahead[victim] = (max(hospitals) + 1, advert)
    transport.stages.clear()
    lines: list[str] = []
    summary = RoundEngine(fed, plan, transport, ahead=ahead, log=lines.append).run()
    assert transport.stages == list(STAGES)
    assert len(summary.survivors) == N  # the victim re-sends its real advertisement at advertise
    if flaw != "missing":
        assert any(victim in line and "starts with advertise" in line for line in lines)


def test_join_without_keys_made_ahead_for_that_round_is_out_of_order(federation) -> None:
    fed, hospitals, plan, transport, ahead = federation
    transport.stages.clear()
    RoundEngine(fed, plan, transport, ahead=ahead).run()
    node = next(iter(hospitals))
    join = transport.requests[JOIN][node]
    with pytest.raises(OutOfOrderMessage, match="no keys ahead"):
        hospitals[node].handle(join, None)  # a fresh state: nothing made ahead
    ended = transport.after["unmask"][node]  # keys made ahead for the round after the joined one
    with pytest.raises(OutOfOrderMessage, match="after round"):
        hospitals[node].handle(join, ended)  # the joined round itself, replayed
    with pytest.raises(OutOfOrderMessage, match="no keys ahead"):
        hospitals[node].handle({**join, "round": join["round"] + 2}, ended)


def test_a_hospital_gone_at_unmask_leaves_no_keys_ahead_and_the_next_round_advertises(federation) -> None:
    fed, hospitals, plan, transport, ahead = federation
    victim = sorted(ahead)[0]
    victim_node = ahead[victim][0]

    class GoneAtUnmask(StageLog):
        def exchange(self, stage, requests, *, round_id):  # type: ignore[no-untyped-def]
            replies = super().exchange(stage, requests, round_id=round_id)
            if stage == "unmask":
                replies[victim_node] = Failure("connection lost")
            return replies

    lossy = GoneAtUnmask(hospitals)
    lossy.states = dict(transport.states)
    engine = RoundEngine(fed, plan, lossy, ahead=ahead)
    assert len(engine.run().survivors) == N  # its masked input was in; the unmask needs only t
    assert victim not in engine.advertised_ahead and len(engine.advertised_ahead) == N - 1
    lossy.stages.clear()
    summary = RoundEngine(fed, plan, lossy, ahead=engine.advertised_ahead).run()
    assert lossy.stages == list(STAGES) and len(summary.survivors) == N


class ClientAppTransport:
    """Each message through our Flower ClientApp with the node's own Context, as a SuperNode
    hands it over (message type, Context.state kept between messages; no network)."""

    def __init__(self, node_configs: Mapping[int, Mapping[str, Any]]) -> None:
        from flwr.app import Context, RecordDict

        self.contexts = {node: Context(run_id=1, node_id=node, node_config=dict(config), state=RecordDict(),
                                       run_config={}) for node, config in node_configs.items()}
        self.stages: list[str] = []

    def nodes(self) -> list[int]:
        return sorted(self.contexts)

    def exchange(self, stage: str, requests, *, round_id: int):  # type: ignore[no-untyped-def]
        from flwr.app import ConfigRecord, Message, Metadata, RecordDict

        from bfl_private.flower.client_app import app
        from bfl_private.rounds.stages import MESSAGE_TYPES, RECORD

        self.stages.append(stage)
        replies: dict[int, Any] = {}
        for node, fields in requests.items():
            metadata = Metadata(run_id=1, message_id=f"{stage}-{round_id}-{node}", src_node_id=1, dst_node_id=node,
                                reply_to_message_id="", group_id=str(round_id), created_at=time.time(), ttl=3600.0,
                                message_type=MESSAGE_TYPES[stage])
            try:
                reply = app(Message(content=RecordDict({RECORD: ConfigRecord(dict(fields))}), metadata=metadata),
                            self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - as Flower does: the error goes back as the reply
                replies[node] = Failure(f"{type(exc).__name__}: {exc}")
                continue
            replies[node] = dict(reply.content[RECORD])
        return replies


def test_keys_made_ahead_survive_in_flower_context_state_and_join_runs_through_the_client_app(tmp_path: Path) -> None:
    pytest.importorskip("flwr")
    from bfl_private.flower.client_app import STATE

    fed, hospitals = make_federation(tmp_path)
    plan = fed.plan(epsilon=2.0, rounds=10, skip_exhausted=False)
    transport = ClientAppTransport({node: {"hospital-dir": str(h.history_path.parent)}
                                    for node, h in hospitals.items()})
    ahead: dict[str, tuple[int, bytes]] = {}
    for _ in range(3):
        engine = RoundEngine(fed, plan, transport, ahead=ahead)
        assert len(engine.run().survivors) == N
        ahead = engine.advertised_ahead
        assert all(STATE in context.state for context in transport.contexts.values())  # the keys made ahead
    assert transport.stages == [*STAGES, JOIN, "mask", "acknowledge", "unmask", JOIN, "mask", "acknowledge", "unmask"]
    report = audit(fed.directory)
    assert report.ok, report.to_json()
    fed.close()
