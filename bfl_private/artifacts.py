"""The round's blobs as the ledger stores them, and their readers (numpy only).

* a model: safetensors ``{"params": float32[D]}``;
* an aggregate: safetensors ``{"total": float64[D+1]}``, the decoded ``[Σ w·Δ, Σ w]``;
* a transcript: canonical JSON.

Readers refuse anything else with an error that names the CID, so the coordinator,
validators and auditors all parse a blob the same way.
"""
from __future__ import annotations

import numpy as np

from .ledger.blobstore import BlobStore
from .ledger.errors import MalformedRecord

MODEL_TENSOR = "params"
AGGREGATE_TENSOR = "total"


def _one_tensor(blobs: BlobStore, cid: str, name: str, dtype: type) -> np.ndarray:
    arrays, _ = blobs.get_arrays(cid)
    array = arrays.get(name)
    if set(arrays) != {name} or array is None or array.dtype != dtype or array.ndim != 1:
        found = {k: (str(v.dtype), v.shape) for k, v in arrays.items()}
        raise MalformedRecord(f"blob {cid}: expected one 1-D {np.dtype(dtype).name} tensor {name!r}, found {found}")
    if not np.all(np.isfinite(array)):
        raise MalformedRecord(f"blob {cid}: tensor {name!r} has non-finite values")
    return array


def put_model(blobs: BlobStore, params: np.ndarray) -> str:
    return blobs.put_arrays({MODEL_TENSOR: np.ascontiguousarray(params, dtype=np.float32)})


def get_model(blobs: BlobStore, cid: str) -> np.ndarray:
    return _one_tensor(blobs, cid, MODEL_TENSOR, np.float32)


def put_aggregate(blobs: BlobStore, total: np.ndarray) -> str:
    return blobs.put_arrays({AGGREGATE_TENSOR: np.ascontiguousarray(total, dtype=np.float64)})


def get_aggregate(blobs: BlobStore, cid: str) -> np.ndarray:
    return _one_tensor(blobs, cid, AGGREGATE_TENSOR, np.float64)
