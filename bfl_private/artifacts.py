"""The round's blobs as the ledger stores them, and their readers (numpy only).

* a model: safetensors ``{"params": float32[D]}``; in a distributed-DP federation it also
  carries the server optimiser's state, ``{"optimizer_steps": int64[1],
  "first_moment": float64[D], "second_moment": float64[D]}``, so the state follows the
  model the quorum accepted and a rejected round leaves both unchanged;
* an aggregate: safetensors ``{"total": float64[D+1]}``, the decoded ``[Σ w·Δ, Σ w]``;
* a transcript: canonical JSON.

Readers refuse anything else with an error that names the CID, so the coordinator,
validators and auditors all parse a blob the same way.
"""
from __future__ import annotations

import numpy as np

from .distributed_round import ServerState
from .ledger.blobstore import BlobStore
from .ledger.errors import MalformedRecord

MODEL_TENSOR = "params"
AGGREGATE_TENSOR = "total"
STATE_TENSORS = {"optimizer_steps": np.int64, "first_moment": np.float64, "second_moment": np.float64}


def _tensors(blobs: BlobStore, cid: str, layouts: list[dict[str, type]]) -> dict[str, np.ndarray]:
    """The blob's 1-D finite tensors, which must match one of ``layouts`` (name -> dtype)."""
    arrays, _ = blobs.get_arrays(cid)
    for layout in layouts:
        if set(arrays) == set(layout) and all(arrays[n].dtype == d and arrays[n].ndim == 1 for n, d in layout.items()):
            for name, array in arrays.items():
                if not np.all(np.isfinite(array)):
                    raise MalformedRecord(f"blob {cid}: tensor {name!r} has non-finite values")
            return arrays
    found = {k: (str(v.dtype), v.shape) for k, v in arrays.items()}
    expected = " or ".join(str({n: np.dtype(d).name for n, d in layout.items()}) for layout in layouts)
    raise MalformedRecord(f"blob {cid}: expected 1-D tensors {expected}, found {found}")


def _one_tensor(blobs: BlobStore, cid: str, name: str, dtype: type) -> np.ndarray:
    return _tensors(blobs, cid, [{name: dtype}])[name]


_MODEL_LAYOUTS = [{MODEL_TENSOR: np.float32}, {MODEL_TENSOR: np.float32, **STATE_TENSORS}]


def put_model(blobs: BlobStore, params: np.ndarray, state: ServerState | None = None) -> str:
    arrays = {MODEL_TENSOR: np.ascontiguousarray(params, dtype=np.float32)}
    if state is not None:
        arrays.update(optimizer_steps=np.array([state.steps], dtype=np.int64),
                      first_moment=np.ascontiguousarray(state.first_moment, dtype=np.float64),
                      second_moment=np.ascontiguousarray(state.second_moment, dtype=np.float64))
    return blobs.put_arrays(arrays)


def get_model(blobs: BlobStore, cid: str) -> np.ndarray:
    return _tensors(blobs, cid, _MODEL_LAYOUTS)[MODEL_TENSOR]


def get_server_state(blobs: BlobStore, cid: str) -> ServerState:
    """The optimiser state a model blob carries; the initial (zero) state if it carries none."""
    arrays = _tensors(blobs, cid, _MODEL_LAYOUTS)
    dimension = arrays[MODEL_TENSOR].shape[0]
    if "optimizer_steps" not in arrays:
        return ServerState.initial(dimension)
    steps = arrays["optimizer_steps"]
    if steps.shape != (1,) or int(steps[0]) < 1 or any(arrays[n].shape != (dimension,)
                                                       for n in ("first_moment", "second_moment")):
        raise MalformedRecord(f"blob {cid}: optimiser state does not fit a model of {dimension} parameters")
    return ServerState(int(steps[0]), arrays["first_moment"], arrays["second_moment"])


def put_aggregate(blobs: BlobStore, total: np.ndarray) -> str:
    return blobs.put_arrays({AGGREGATE_TENSOR: np.ascontiguousarray(total, dtype=np.float64)})


def get_aggregate(blobs: BlobStore, cid: str) -> np.ndarray:
    return _one_tensor(blobs, cid, AGGREGATE_TENSOR, np.float64)
