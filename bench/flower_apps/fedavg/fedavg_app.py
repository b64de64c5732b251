"""Flower's standard Message-API FedAvg round, timed on the server: the baseline of
``bench/bench_flower_deployment.py``.

Server: ``flwr.serverapp.strategy.FedAvg`` run by its own ``Strategy.start`` loop, as
shipped (``Grid.send_and_receive`` with its own polling), evaluation off
(``fraction_evaluate = 0``) so a round is one train exchange. The subclass only reads
the clock around the strategy's hooks, which ``Strategy.start`` calls once per round in
this order: ``configure_train`` (round opens), the train exchange, ``aggregate_train``,
``configure_evaluate`` / the (empty) evaluate exchange / ``aggregate_evaluate`` (round
closes). Each round logs ``bench-flower round R: stage train in X s`` and
``bench-flower round R: total X s``, which the bench reads off ``flwr run --stream``.

Client: a ClientApp whose train handler returns a fixed float vector of ``dim`` values
(drawn from the run config's ``seed`` and the node id: no training) with weight 1.
"""
from __future__ import annotations

import time
from logging import INFO

import numpy as np
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

server = ServerApp()
client = ClientApp()


def _vector(seed: int, node_id: int, dim: int) -> np.ndarray:
    """This node's fixed update: the same every round of a run, fresh per run (seed)."""
    return np.random.default_rng([seed, node_id]).uniform(-1.0, 1.0, dim)


class TimedFedAvg(FedAvg):
    """FedAvg unchanged; logs the train exchange's and the whole round's wall time."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self._opened = 0.0
        self._sent = 0.0

    def configure_train(self, server_round, arrays, config, grid):  # type: ignore[no-untyped-def]
        self._opened = time.perf_counter()
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self._sent = time.perf_counter()  # Strategy.start pushes these next
        return messages

    def aggregate_train(self, server_round, replies):  # type: ignore[no-untyped-def]
        replies = list(replies)
        log(INFO, "bench-flower round %d: stage train in %.4f s (%d replies)", server_round,
            time.perf_counter() - self._sent, len(replies))
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round, replies):  # type: ignore[no-untyped-def]
        result = super().aggregate_evaluate(server_round, replies)
        log(INFO, "bench-flower round %d: total %.4f s", server_round, time.perf_counter() - self._opened)
        return result


@server.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes, dim = int(config["nodes"]), int(config["dim"])
    strategy = TimedFedAvg(fraction_train=1.0, fraction_evaluate=0.0, min_train_nodes=nodes,
                           min_evaluate_nodes=nodes, min_available_nodes=nodes)
    strategy.start(grid=grid, initial_arrays=ArrayRecord([np.zeros(dim)]),
                   num_rounds=int(config["num-server-rounds"]))


@client.train()
def train(message: Message, context: Context) -> Message:
    config = context.run_config
    vector = _vector(int(config["seed"]), context.node_id, int(config["dim"]))
    content = RecordDict({"arrays": ArrayRecord([vector]), "metrics": MetricRecord({"num-examples": 1})})
    return Message(content=content, reply_to=message)
