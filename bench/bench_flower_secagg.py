"""Peer comparison: Flower's SecAgg+ against our masking, same settings, same process.

Flower side: the real protocol code of ``flwr==1.42.0`` — ``SecAggPlusWorkflow`` (server)
and ``secaggplus_mod`` on a ``ClientApp`` whose ``NumPyClient.fit`` returns the client's
vector. The only piece written here is the transport: :class:`LoopbackGrid`, a Flower
``Grid`` that hands each message to its node's ``ClientApp`` in this process, through
Flower's own protobuf serde (``message_to_proto`` / bytes / ``message_from_proto``), as the
SuperLink would. Stand-alone ``Message`` objects matter: the setup stage sends one shared
``RecordDict`` that ``secaggplus_mod`` mutates. A dropped client stops answering from
the masked-input stage on (after sharing keys: the costliest case for the server).
Flower draws its neighbour ring with Python's ``random`` (``random.sample`` of the client
manager, ``random.shuffle`` in the workflow's setup stage); the bench seeds ``random``
before each Flower round, so all repeats of a row use one ring, which it reads off the
share-keys messages of a probe round (:func:`flower_graph`).

Our side: :func:`bfl_private.protocols.masking.secure_sum` (X25519, Ed25519-signed keys and
consistency check, Shamir over GF(2^256+297), AES-GCM, AES-CTR masks), plus the same float
work as Flower's client and server (fixed-point encode of the update, decode of the sum)
through :class:`FixedPointCodec` at Flower's quantisation (2^22 levels, modulus 2^32).

Equal settings: N clients, D parameters in [-1, 1], neighbour degree k (Flower's
``num_shares`` = k + 1, its neighbourhood counts the client itself, so k is even and
``num_shares`` odd as SecAgg+ wants), threshold t = floor(2k/3) + 1 for both (Flower:
``reconstruction_threshold=t``), clipping range 1 and 2^22 levels for both, Flower's
``max_weight`` = 1 (every client reports weight 1; Flower's default of 1000 would scale
each update down 1000-fold before quantising it), every other Flower knob at its
default, the same dropped clients. The drop set is drawn at random (seeded per row) among
the sets of round(dropout x N) clients that leave every client at least t live
neighbours in both protocols' graphs (ours: the Harary graph of the round seed; Flower:
its seeded ring, counting the client itself as Flower does), so both can unmask: a set
that sinks one protocol's round measures nothing. (Unseeded, about 1 in 90 of Flower's
rings at N = 50 with 5 drops put all five within one neighbourhood of 13, and its
workflow halts with "Insufficient available nodes": that is why an earlier run had no
figure for N = 50, D = 1e4, 10%.) Figure: total CPU seconds
(``time.process_time``) of every party of one round, all in this process, best of 3
interleaved repeats after a warm-up round; ratio = Flower / ours. Long-term identity
keys (ours: each client's Ed25519 key; Flower has none) are made once per row, outside
the timed round, like Flower's ``ClientApp`` objects would be in a deployment; every
per-round key, signature and check is timed. Both totals are checked against the float sum of the survivors' clipped inputs.

Not counted for either side: network, key distribution outside the round (identity keys). Flower's masks
come from ``numpy.random.RandomState`` seeded with a 32-bit fold of the shared secret
(``secaggplus_utils.pseudo_rand_gen``); ours from AES-128-CTR keyed by the full 256-bit
secret — so Flower's PRG is cheaper per word and still loses on total CPU.

    python -m bench.bench_flower_secagg [--quick]
"""
from __future__ import annotations

import logging
import random
import sys
import time
from collections.abc import Callable, Iterable, Mapping

import numpy as np
from bfl_private.protocols.masking import secure_sum
from bfl_private.protocols.masking_graph import MaskingParams, default_threshold
from bfl_private.protocols.quantize import FixedPointCodec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
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

    def __init__(self, apps: Mapping[int, tuple[ClientApp, Context]], silent_from: Mapping[int, str],
                 *, probe: bool = False) -> None:
        self._apps = dict(apps)
        self._silent_from = dict(silent_from)
        self._run = Run.create_empty(run_id=1)
        self._counter = 0
        self._probe = probe
        self.neighbours: dict[int, set[int]] = {}
        """node -> its Flower neighbourhood (itself included), read off the share-keys messages."""

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
            record = delivered.content.config_records[RECORD_KEY_CONFIGS]
            stage = record[Key.STAGE]
            node = message.metadata.dst_node_id
            if stage == Stage.SHARE_KEYS:
                self.neighbours[node] = {int(key) for key in record if key != Key.STAGE}
            elif self._probe and stage != Stage.SETUP:
                raise _ProbeDone
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


class _ProbeDone(Exception):
    """Ends a probe round once Flower has sent its share-keys messages."""


def flower_graph(n: int, *, neighbours: int, threshold: int, seed: int) -> dict[int, set[int]]:
    """Flower's neighbourhoods (client index -> indices, itself included) in a round run
    after ``random.seed(seed)``: a probe round stopped after the share-keys stage."""
    random.seed(seed)
    grid_box: list[LoopbackGrid] = []
    try:
        flower_round([np.zeros(1)] * n, neighbours=neighbours, threshold=threshold, dropped=set(),
                     _grids=grid_box, _probe=True)
    except _ProbeDone:
        pass
    graph = grid_box[0].neighbours
    if len(graph) != n:
        raise PeerRoundFailed(f"probe saw share-keys messages for {len(graph)} of {n} Flower clients")
    return {node - 1: {v - 1 for v in members} for node, members in graph.items()}


def draw_dropped(n: int, count: int, *, ours: Mapping[int, Iterable[int]], flower: Mapping[int, set[int]],
                 threshold: int, rng: np.random.Generator, tries: int = 10_000) -> set[int]:
    """``count`` clients drawn at random among the sets that leave every client at least
    ``threshold`` live neighbours in both graphs (Flower's neighbourhoods count the client
    itself, live or not, as its workflow's ``_check_threshold`` does)."""
    for _ in range(tries):
        dropped = {int(i) for i in rng.choice(n, size=count, replace=False)}
        if all(len(set(ours[u]) - dropped) >= threshold for u in range(n)) and all(
                len(flower[u] - dropped) >= threshold for u in range(n)):
            return dropped
    raise PeerRoundFailed(f"no drop set of {count} of {n} clients in {tries} draws leaves every client "
                          f"{threshold} live neighbours in both protocols")


def flower_round(vectors: list[np.ndarray], *, neighbours: int, threshold: int, dropped: set[int],
                 _grids: list | None = None, _probe: bool = False) -> np.ndarray:
    """One SecAgg+ round of Flower's real code; returns the unmasked float sum of survivors."""
    # The identity the ServerApp runtime gives its process (flwr.server.compat.app).
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    nodes = {i + 1: v for i, v in enumerate(vectors)}
    apps = {}
    for node, vector in nodes.items():
        app = ClientApp(client_fn=_client_fn(vector), mods=[secaggplus_mod])
        apps[node] = (app, Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={}))
    grid = LoopbackGrid(apps, {i + 1: Stage.COLLECT_MASKED_VECTORS for i in dropped}, probe=_probe)
    if _grids is not None:
        _grids.append(grid)
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


def our_round(vectors: list[np.ndarray], *, neighbours: int, threshold: int, dropped: set[int],
              identities: list[Ed25519PrivateKey] | None = None) -> np.ndarray:
    """The same round through our masking, with the same encode and decode work.

    ``identities`` are the clients' long-term Ed25519 keys (fresh ones when None)."""
    codec = FixedPointCodec(clip=CLIP, bits=LEVELS_BITS, max_summands=len(vectors))
    rng = np.random.default_rng(7)
    encoded = [codec.encode(v, rng) for v in vectors]
    result = secure_sum(encoded, neighbours=neighbours, threshold=threshold, drop={i: "mask" for i in dropped},
                        seed=ROUND_SEED, identities=identities)
    return codec.decode_sum(result.total, len(result.included))


def _neighbours(n: int) -> int:
    """Even k (odd Flower ``num_shares``) near Bell et al.'s k = 13 for N = 50: 6 at N = 10, 12 at N = 50."""
    return min(12, (n // 2 + 1) & ~1)


def measure(n: int, length: int, dropout: float, *, repeats: int = 3) -> dict:
    k = _neighbours(n)
    t = default_threshold(k)
    rng = np.random.default_rng(n * 7919 + length)
    vectors = [rng.uniform(-CLIP, CLIP, length) for _ in range(n)]
    flower_seed = n * 7919 + length
    ours_graph = MaskingParams.create(round_id=0, round_seed=ROUND_SEED, clients=[str(i) for i in range(n)],
                                      length=length, neighbours=k, threshold=t).graph
    flower = flower_graph(n, neighbours=k, threshold=t, seed=flower_seed)
    dropped = draw_dropped(n, round(dropout * n), ours=ours_graph, flower=flower, threshold=t, rng=rng)
    identities = [Ed25519PrivateKey.generate() for _ in range(n)]  # long-term keys: not timed
    expected = np.sum([v for i, v in enumerate(vectors) if i not in dropped], axis=0)
    row = {"suite": "flower_secagg", "case": f"N={n}, D={length:.0e}, k={k}, t={t}, dropout={dropout:.0%}",
           "n": n, "d": length, "neighbours": k, "threshold": t, "dropout": dropout,
           "baseline": f"Flower {_flwr_version()} SecAgg+ (SecAggPlusWorkflow + secaggplus_mod)"}
    results: dict[str, np.ndarray] = {}
    cpu: dict[str, float] = {}
    for _ in range(repeats):  # interleaved, so both sides see the same load; best of each
        grids: list[LoopbackGrid] = []
        for name, fn, extra in (("flower", flower_round, {"_grids": grids}),
                                ("ours", our_round, {"identities": identities})):
            random.seed(flower_seed)  # Flower's ring: the probed one
            start = time.process_time()
            try:
                results[name] = fn(vectors, neighbours=k, threshold=t, dropped=dropped, **extra)
            except Exception as exc:  # noqa: BLE001 - a setting Flower (or we) cannot run is recorded
                return {**row, "aborted": f"{name}: {type(exc).__name__}: {exc}"}
            cpu[name] = min(cpu.get(name, float("inf")), time.process_time() - start)
        ring = {node - 1: {v - 1 for v in members} for node, members in grids[0].neighbours.items()}
        if ring != flower:
            raise PeerRoundFailed(f"Flower's ring in {row['case']} is not the probed one: the drop draw is void")
    # Each side's error bound: one quantisation step per summand (ours: codec.step, Flower: 2c/2^22).
    tolerance = (n - len(dropped)) * 2 * CLIP / ((1 << LEVELS_BITS) - 1) * 1.01 + 1e-9
    for name, total in results.items():
        error = float(np.max(np.abs(total - expected)))
        if error > tolerance:
            raise PeerRoundFailed(f"{name} round {row['case']}: max error {error:.3g} > bound {tolerance:.3g}")
    return {**row, "dropped": sorted(dropped), "figure": f"ours {cpu['ours']:.3f} s CPU", "cpu_s": round(cpu["ours"], 4),
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
