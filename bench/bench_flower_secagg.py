"""Peer comparison: Flower's SecAgg+ against our masking, same settings, same process.

Flower side: the real protocol code of ``flwr==1.42.0`` — ``SecAggPlusWorkflow`` (server)
and ``secaggplus_mod`` on a ``ClientApp`` whose ``NumPyClient.fit`` returns the client's
vector. The only piece written here is the transport: :class:`LoopbackGrid`, a Flower
``Grid`` that hands each message to its node's ``ClientApp`` in this process, through
Flower's own protobuf serde (``message_to_proto`` / bytes / ``message_from_proto``), as the
SuperLink would. Stand-alone ``Message`` objects matter: the setup stage sends one shared
``RecordDict`` that ``secaggplus_mod`` mutates. A dropped client stops answering from
the masked-input stage on (after sharing keys: the costliest case for the server).

Our side: :func:`bfl_private.protocols.masking.secure_sum` (X25519, Ed25519-signed keys and
consistency check, Shamir over GF(2^256+297), AES-GCM, AES-CTR masks), plus the same float
work as Flower's client and server (fixed-point encode of the update, decode of the sum)
through :class:`FixedPointCodec` at Flower's quantisation (2^22 levels, modulus 2^32).

Equal settings: N clients, D parameters in [-1, 1], neighbour degree k (Flower's
``num_shares`` = k + 1, its neighbourhood counts the client itself, so k is even and
``num_shares`` odd as SecAgg+ wants), threshold t = floor(2k/3) + 1 for both (Flower:
``reconstruction_threshold=t``), the same dropped clients. Figure: total CPU seconds
(``time.process_time``) of every party of one round, all in this process, best of 3
interleaved repeats after a warm-up round; ratio = Flower / ours. Both totals are checked against the float sum of the survivors' clipped inputs.

Not counted for either side: network, key distribution outside the round. Flower's masks
come from ``numpy.random.RandomState`` seeded with a 32-bit fold of the shared secret
(``secaggplus_utils.pseudo_rand_gen``); ours from AES-128-CTR keyed by the full 256-bit
secret — so Flower's PRG is cheaper per word and still loses on total CPU.

    python -m bench.bench_flower_secagg [--quick]
"""
from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from bfl_private.protocols.masking import secure_sum
from bfl_private.protocols.masking_graph import default_threshold
from bfl_private.protocols.quantize import FixedPointCodec
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.client import Client, NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.compat.common import recorddict_compat as compat
from flwr.proto.message_pb2 import Message as ProtoMessage  # pylint: disable=no-name-in-module
from flwr.server import ServerConfig
from flwr.server.client_manager import SimpleClientManager
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.strategy import FedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

CLIP = 1.0
LEVELS_BITS = 22  # Flower's default quantization_range = 2^22
ROUND_SEED = b"flower-vs-ours-round-seed-000000"


class PeerRoundFailed(Exception):
    """A round of either protocol aborted or produced a wrong sum at a benchmark setting."""


def _transport(message: Message) -> Message:
    """What the SuperLink does to a message between two parties: Flower's protobuf bytes."""
    return message_from_proto(ProtoMessage.FromString(message_to_proto(message).SerializeToString()))


class LoopbackGrid(Grid):
    """A Flower ``Grid`` that delivers each message to an in-process ``ClientApp``.

    ``silent_from[node] = stage`` makes that node stop answering from that SecAgg+ stage
    on, as a node that went offline (no reply: the workflow sees it missing).
    """

    def __init__(self, apps: Mapping[int, tuple[ClientApp, Context]], silent_from: Mapping[int, str]) -> None:
        self._apps = dict(apps)
        self._silent_from = dict(silent_from)
        self._run = Run.create_empty(run_id=1)
        self._counter = 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._apps)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise PeerRoundFailed("LoopbackGrid delivers synchronously; use send_and_receive")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise PeerRoundFailed("LoopbackGrid delivers synchronously; use send_and_receive")

    def _silent(self, node: int, stage: str) -> bool:
        if node not in self._silent_from:
            return False
        order = Stage.all()
        return order.index(stage) >= order.index(self._silent_from[node])

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            self._counter += 1
            message.metadata.__dict__["_message_id"] = f"m{self._counter}"
            delivered = _transport(message)
            stage = delivered.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE]
            node = message.metadata.dst_node_id
            if self._silent(node, str(stage)):
                continue
            app, context = self._apps[node]
            replies.append(_transport(app(delivered, context)))
        return replies


class _VectorClient(NumPyClient):
    """Returns its fixed vector as the trained parameters (weight 1: FedAvg is then the mean)."""

    def __init__(self, vector: np.ndarray) -> None:
        self.vector = vector

    def fit(self, parameters: list[np.ndarray], config: dict) -> tuple[list[np.ndarray], int, dict]:
        return [self.vector], 1, {}


def _client_fn(vector: np.ndarray) -> Callable[[Context], Client]:
    def client_fn(context: Context) -> Client:
        return _VectorClient(vector).to_client()

    return client_fn


def flower_round(vectors: list[np.ndarray], *, neighbours: int, threshold: int, dropped: set[int]) -> np.ndarray:
    """One SecAgg+ round of Flower's real code; returns the unmasked float sum of survivors."""
    # The identity the ServerApp runtime gives its process (flwr.server.compat.app).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    nodes = {i + 1: v for i, v in enumerate(vectors)}
    apps = {}
    for node, vector in nodes.items():
        app = ClientApp(client_fn=_client_fn(vector), mods=[secaggplus_mod])
        apps[node] = (app, Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={}))
    grid = LoopbackGrid(apps, {i + 1: Stage.COLLECT_MASKED_VECTORS for i in dropped})
    n = len(vectors)
    strategy = FedAvg(fraction_fit=1.0, min_fit_clients=n, min_available_clients=n, fraction_evaluate=0.0)
    context = LegacyContext(Context(run_id=1, node_id=SUPERLINK_NODE_ID, node_config={}, state=RecordDict(),
                                    run_config={}), config=ServerConfig(num_rounds=1), strategy=strategy,
                            client_manager=SimpleClientManager())
    for node in nodes:
        context.client_manager.register(GridClientProxy(node, grid, run_id=1))
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: 1})
    context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
        ndarrays_to_parameters([np.zeros_like(vectors[0])]), keep_input=True)
    workflow = SecAggPlusWorkflow(num_shares=neighbours + 1, reconstruction_threshold=threshold,
                                  clipping_range=CLIP, quantization_range=1 << LEVELS_BITS, max_weight=1.0)
    initial = context.state.array_records[MAIN_PARAMS_RECORD]
    workflow(grid, context)
    if context.state.array_records[MAIN_PARAMS_RECORD] is initial:
        raise PeerRoundFailed("Flower's SecAgg+ workflow halted before unmasking (see its log)")
    mean = parameters_to_ndarrays(compat.arrayrecord_to_parameters(
        context.state.array_records[MAIN_PARAMS_RECORD], keep_input=True))[0]
    return mean * (n - len(dropped))  # FedAvg with weight 1 each: the mean of the survivors


def our_round(vectors: list[np.ndarray], *, neighbours: int, threshold: int, dropped: set[int]) -> np.ndarray:
    """The same round through our masking, with the same encode and decode work."""
    codec = FixedPointCodec(clip=CLIP, bits=LEVELS_BITS, max_summands=len(vectors))
    rng = np.random.default_rng(7)
    encoded = [codec.encode(v, rng) for v in vectors]
    result = secure_sum(encoded, neighbours=neighbours, threshold=threshold, drop={i: "mask" for i in dropped},
                        seed=ROUND_SEED)
    return codec.decode_sum(result.total, len(result.included))


def _neighbours(n: int) -> int:
    """Even k (odd Flower ``num_shares``) near Bell et al.'s k = 13 for N = 50: 6 at N = 10, 12 at N = 50."""
    return min(12, (n // 2 + 1) & ~1)


def measure(n: int, length: int, dropout: float, *, repeats: int = 3) -> dict:
    k = _neighbours(n)
    t = default_threshold(k)
    rng = np.random.default_rng(n * 7919 + length)
    vectors = [rng.uniform(-CLIP, CLIP, length) for _ in range(n)]
    dropped = {int(i) for i in rng.choice(n, size=round(dropout * n), replace=False)}
    expected = np.sum([v for i, v in enumerate(vectors) if i not in dropped], axis=0)
    row = {"suite": "flower_secagg", "case": f"N={n}, D={length:.0e}, k={k}, t={t}, dropout={dropout:.0%}",
           "n": n, "d": length, "neighbours": k, "threshold": t, "dropout": dropout,
           "baseline": f"Flower {_flwr_version()} SecAgg+ (SecAggPlusWorkflow + secaggplus_mod)"}
    results: dict[str, np.ndarray] = {}
    cpu: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so both sides see the same load; best of each
        for name, fn in (("flower", flower_round), ("ours", our_round)):
            start = time.process_time()
            try:
                results[name] = fn(vectors, neighbours=k, threshold=t, dropped=dropped)
            except Exception as exc:  # noqa: BLE001 - a setting Flower (or we) cannot run is recorded
                return {**row, "aborted": f"{name}: {type(exc).__name__}: {exc}"}
            cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - start)
    # Each side's error bound: one quantisation step per summand (ours: codec.step, Flower: 2c/2^22).
    tolerance = (n - len(dropped)) * 2 * CLIP / ((1 << LEVELS_BITS) - 1) * 1.01 + 1e-9
    for name, total in results.items():
        error = float(np.max(np.abs(total - expected)))
        if error > tolerance:
            raise PeerRoundFailed(f"{name} round {row['case']}: max error {error:.3g} > bound {tolerance:.3g}")
    return {**row, "figure": f"ours {cpu['ours']:.3f} s CPU", "cpu_s": round(cpu["ours"], 4),
            "baseline_cpu_s": round(cpu["flower"], 4), "ratio": round(cpu["flower"] / cpu["ours"], 2)}


def _flwr_version() -> str:
    import flwr

    return flwr.__version__


def run(*, quick: bool) -> list[dict]:
    logging.getLogger("flwr").setLevel(logging.ERROR)
    grid = [(10, 10_000)] if quick else [(10, 10_000), (10, 100_000), (50, 10_000), (50, 100_000)]
    measure(5, 100, 0.0, repeats=1)  # warm-up: first calls of both stacks (lazy imports, caches)
    return [measure(n, length, dropout) for n, length in grid for dropout in (0.0, 0.1)]


if __name__ == "__main__":
    from bench.report import flower_table

    print(flower_table({"suites": {"flower_secagg": {"rows": run(quick="--quick" in sys.argv[1:])}}}))
