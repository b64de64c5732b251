"""The federation's ServerApp (Flower 1.42 Message API): coordinator, aggregator, ledger.

``flwr run`` starts it with the run config of ``flower_app/pyproject.toml`` (kebab-case
keys, override with ``--run-config``):

    federation-dir   the federation directory (ledger, blobs, coordinator and validator
                     keys), as created by ``python -m bfl_private.flower.setup``
    epsilon          privacy budget (ε) this run may spend per hospital
    rounds           rounds in this run
    protocol         aggregation protocol: ``masking`` (SecAgg / SecAgg+), ``paillier`` or
                     ``ckks`` (the key holder stays in this ServerApp's federation
                     directory; hospitals get only its public key), or ``plain`` (the
                     unprotected baseline; hospitals take part only if genesis names it)
    min-nodes        SuperNodes to wait for before the first round (0: one per hospital)
    node-wait        seconds to wait for them
    stage-timeout    seconds a stage without training waits for replies; a hospital silent
                     that long is a dropout
    train-timeout    the same for the stage in which hospitals train (``advertise``, ``join``, ``encrypt``).
                     A dead SuperNode costs the timeout of the stage it died in (the
                     SuperLink notices it only after two missed 30 s heartbeats), so the
                     light stages keep a short one
    skip-exhausted   leave out hospitals whose lifetime budget cannot afford the run
    validators       validators running as their own processes (``bfl-private validator``):
                     "NAME=HOST:PORT,NAME=HOST:PORT"; the others run in this ServerApp,
                     which then loads their hold-out split. With every validator remote
                     the ServerApp loads no dataset (it holds no hospital's data either)

Each round is :class:`~bfl_private.rounds.engine.RoundEngine` over Flower's grid
(:class:`GridTransport`), one message exchange per stage.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

from ..coordinator import Coordinator, RunRefused
from ..validator_service import parse_address
from ..rounds.engine import Failure, RoundEngine
from ..rounds.stages import MESSAGE_TYPES, PROTOCOL_STAGES, RECORD, TRAINING_STAGES

logger = logging.getLogger("flwr")

app = ServerApp()


@dataclass(frozen=True)
class RunSettings:
    federation_dir: Path
    protocol: str
    epsilon: float
    rounds: int
    min_nodes: int
    node_wait: float
    stage_timeout: float
    train_timeout: float
    skip_exhausted: bool
    validators: Mapping[str, str]

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Check the run config; a bad value is a :class:`RunRefused` naming the key."""
        def get(key: str, kind: type | tuple[type, ...], check=lambda v: True, rule: str = "") -> Any:
            value = config.get(key)
            if isinstance(value, bool) != (kind is bool) or not isinstance(value, kind) or not check(value):
                raise RunRefused(f"run config {key!r} must be {rule or getattr(kind, '__name__', kind)}, got {value!r}")
            return value

        protocol = get("protocol", str, lambda v: v in PROTOCOL_STAGES, "one of " + ", ".join(map(repr, PROTOCOL_STAGES)))
        return cls(
            federation_dir=Path(get("federation-dir", str, bool, "a directory path")),
            protocol=protocol,
            epsilon=float(get("epsilon", (int, float), lambda v: v > 0, "a number > 0")),
            rounds=get("rounds", int, lambda v: 1 <= v <= 1000, "an integer in 1..1000"),
            min_nodes=get("min-nodes", int, lambda v: v >= 0, "an integer >= 0"),
            node_wait=float(get("node-wait", (int, float), lambda v: v >= 0, "a number >= 0")),
            stage_timeout=float(get("stage-timeout", (int, float), lambda v: v > 0, "a number > 0")),
            train_timeout=float(get("train-timeout", (int, float), lambda v: v > 0, "a number > 0")),
            skip_exhausted=get("skip-exhausted", bool),
            validators=_validator_addresses(config.get("validators", "")),
        )


def _validator_addresses(value: Any) -> dict[str, str]:
    """``NAME=HOST:PORT,...`` of the run config's ``validators`` (absent: none); RunRefused
    naming it otherwise."""
    if not isinstance(value, str):
        raise RunRefused(f"run config 'validators' must be a string of NAME=HOST:PORT, got {value!r}")
    addresses: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in value.split(","))):
        name, sep, address = item.partition("=")
        try:
            if not sep or not name or name in addresses:
                raise ValueError(f"{item!r} is not NAME=HOST:PORT (each name once)")
            parse_address(address)
        except ValueError as exc:
            raise RunRefused(f"run config 'validators': {exc}") from None
        addresses[name] = address
    return addresses


POLL_SECONDS = 0.2
"""How often a stage asks the SuperLink for replies. ``Grid.send_and_receive`` sleeps 3 s
between pulls, which adds up to 3 s to every stage; pulling is a cheap local call."""


class GridTransport:
    """Our stage messages over a Flower grid: one ConfigRecord per message."""

    def __init__(self, grid: Grid, *, timeout: float, train_timeout: float, poll: float = POLL_SECONDS) -> None:
        self.grid = grid
        self.timeout = timeout
        self.train_timeout = train_timeout
        self.poll = poll

    def nodes(self) -> list[int]:
        return sorted(self.grid.get_node_ids())

    def exchange(self, stage: str, requests: Mapping[int, Mapping[str, Any]], *,
                 round_id: int) -> dict[int, Mapping[str, Any] | Failure]:
        messages = [Message(RecordDict({RECORD: ConfigRecord(dict(fields))}), node, MESSAGE_TYPES[stage],
                            group_id=str(round_id))
                    for node, fields in requests.items()]
        replies: dict[int, Mapping[str, Any] | Failure] = {}
        timeout = self.train_timeout if stage in TRAINING_STAGES else self.timeout
        for reply in self._send_and_receive(messages, timeout):
            node = reply.metadata.src_node_id
            if reply.has_error():
                replies[node] = Failure(reply.error.reason or f"error code {reply.error.code}")
            elif RECORD not in reply.content or not isinstance(reply.content[RECORD], ConfigRecord):
                replies[node] = Failure(f"reply without the {RECORD!r} ConfigRecord")
            else:
                replies[node] = dict(reply.content[RECORD])
        return replies

    def _send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        """``Grid.send_and_receive`` with a short poll: push, then pull until every reply
        is in or the stage's timeout has passed (the missing nodes are its dropouts)."""
        waiting = set(self.grid.push_messages(messages))
        deadline = time.monotonic() + timeout
        received: list[Message] = []
        while waiting:
            replies = list(self.grid.pull_messages(waiting))
            received.extend(replies)
            waiting.difference_update(r.metadata.reply_to_message_id for r in replies)
            if not waiting or time.monotonic() >= deadline:
                break
            time.sleep(self.poll)
        return received


def _wait_for_nodes(grid: Grid, count: int, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while (connected := len(list(grid.get_node_ids()))) < count and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    return connected


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    federation = Coordinator.open(settings.federation_dir, remote_validators=settings.validators)
    try:
        federation.settle_interrupted_round()  # before planning: what it writes is spent
        plan = federation.plan(epsilon=settings.epsilon, rounds=settings.rounds,
                               skip_exhausted=settings.skip_exhausted)
        for client, reason in plan.left_out.items():
            logger.warning("bfl-private: %s left out: %s", client, reason)
        wanted = settings.min_nodes or len(plan.clients)
        connected = _wait_for_nodes(grid, wanted, settings.node_wait)
        logger.info("bfl-private: %d SuperNodes connected (%d wanted), %d hospitals planned",
                    connected, wanted, len(plan.clients))
        transport = GridTransport(grid, timeout=settings.stage_timeout, train_timeout=settings.train_timeout)
        ahead: dict[str, tuple[int, bytes]] = {}
        for _ in range(settings.rounds):
            # Keys the hospitals advertised ahead in the last round's unmask: a masking round
            # then starts with join (four exchanges); the engine checks them first.
            engine = RoundEngine(federation, plan, transport, protocol=settings.protocol, ahead=ahead,
                                 log=lambda line: logger.info("bfl-private %s", line))
            summary = engine.run()
            ahead = engine.advertised_ahead
            logger.info("bfl-private round %d: %s, survivors %d, dropouts %s, %.2f s",
                        summary.round, summary.status, len(summary.survivors), list(summary.dropouts), summary.seconds)
        logger.info("bfl-private: ledger %s (check it with: bfl-private verify %s)",
                    settings.federation_dir, settings.federation_dir)
    finally:
        federation.close()
