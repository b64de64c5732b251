"""Flower's own SecAgg+ round, timed per stage on the server: the baseline of
``bench/bench_flower_deployment.py``.

Server: the legacy ``ServerApp`` path of Flower's secure-aggregation example,
``DefaultWorkflow(fit_workflow=SecAggPlusWorkflow(...))`` over a ``LegacyContext`` with
the legacy ``FedAvg`` strategy (all nodes every round, evaluation off so a round is the
SecAgg+ fit alone), ``num_shares`` and ``reconstruction_threshold`` from the run config
(5 and 3 in the bench), every other SecAgg+ knob at Flower's default (``timeout=None``:
each stage waits for every reply, polling as ``Grid.send_and_receive`` ships). The
subclass only reads the clock around each of the workflow's four stage methods (setup,
share keys, collect masked vectors, unmask: each one exchange with the nodes plus the
server's work on the replies) and around the round (fit workflow start to evaluate
workflow end), logging ``bench-flower round R: stage S in X s`` and
``bench-flower round R: total X s`` for the bench to read off ``flwr run --stream``.

Client: ``ClientApp(client_fn, mods=[secaggplus_mod])`` whose ``NumPyClient.fit``
returns a fixed float vector of ``dim`` values (drawn from the run config's ``seed`` and
the node id: no training) with weight 1.
"""
from __future__ import annotations

import time
from logging import INFO

import numpy as np
from flwr.app import Context
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters
from flwr.common.logger import log
from flwr.server import Grid, LegacyContext, ServerConfig
from flwr.server.strategy import FedAvg
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.server.workflow.default_workflows import default_evaluate_workflow
from flwr.serverapp import ServerApp

server = ServerApp()

STAGES = (("setup", "setup_stage"), ("share-keys", "share_keys_stage"),
          ("collect-masked-vectors", "collect_masked_vectors_stage"), ("unmask", "unmask_stage"))


def _vector(seed: int, node_id: int, dim: int) -> np.ndarray:
    """This node's fixed update: the same every round of a run, fresh per run (seed)."""
    return np.random.default_rng([seed, node_id]).uniform(-1.0, 1.0, dim)


def _round(context: LegacyContext) -> int:
    return int(context.state.config_records[MAIN_CONFIGS_RECORD][WorkflowKey.CURRENT_ROUND])


class TimedSecAggPlusWorkflow(SecAggPlusWorkflow):
    """SecAggPlusWorkflow unchanged; each stage method is timed and logged."""

    opened = 0.0

    def __call__(self, grid: Grid, context: LegacyContext) -> None:  # type: ignore[override]
        self.opened = time.perf_counter()
        super().__call__(grid, context)


def _timed_stage(label: str, method_name: str):  # type: ignore[no-untyped-def]
    original = getattr(SecAggPlusWorkflow, method_name)

    def stage(self, grid, context, state):  # type: ignore[no-untyped-def]
        started = time.perf_counter()
        carried_on = original(self, grid, context, state)
        log(INFO, "bench-flower round %d: stage %s in %.4f s", _round(context), label,
            time.perf_counter() - started)
        return carried_on

    stage.__name__ = method_name
    return stage


for _label, _name in STAGES:
    setattr(TimedSecAggPlusWorkflow, _name, _timed_stage(_label, _name))


@server.main()
def main(grid: Grid, context: Context) -> None:
    config = context.run_config
    nodes, dim = int(config["nodes"]), int(config["dim"])
    strategy = FedAvg(fraction_fit=1.0, fraction_evaluate=0.0, min_fit_clients=nodes, min_available_clients=nodes,
                      initial_parameters=ndarrays_to_parameters([np.zeros(dim)]))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=int(config["num-server-rounds"])),
                           strategy=strategy)
    fit = TimedSecAggPlusWorkflow(num_shares=int(config["num-shares"]),
                                  reconstruction_threshold=int(config["reconstruction-threshold"]))

    def evaluate(grid: Grid, context: Context) -> None:
        # DefaultWorkflow runs per round: fit, centralised evaluation, this; the round closes here.
        default_evaluate_workflow(grid, context)
        log(INFO, "bench-flower round %d: total %.4f s", _round(legacy), time.perf_counter() - fit.opened)

    DefaultWorkflow(fit_workflow=fit, evaluate_workflow=evaluate)(grid, legacy)


class VectorClient(NumPyClient):
    """Returns its fixed vector as the trained parameters, weight 1."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        return [self.vector], 1, {}


def client_fn(context: Context) -> Client:
    config = context.run_config
    return VectorClient(_vector(int(config["seed"]), context.node_id, int(config["dim"]))).to_client()


client = ClientApp(client_fn=client_fn, mods=[secaggplus_mod])
