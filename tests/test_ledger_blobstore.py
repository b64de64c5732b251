"""The blob store: CID-named files, re-hashing reads, atomic writes, safetensors and JSON."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bfl_private.ledger.blobstore import BlobStore
from bfl_private.ledger.cid import cid_for
from bfl_private.ledger.errors import CIDMismatch, MalformedRecord, StorageError


@pytest.fixture()
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_put_get_is_content_addressed_and_idempotent(store: BlobStore) -> None:
    cid = store.put(b"masked update")
    assert cid == cid_for(b"masked update")
    assert (store.root / cid).read_bytes() == b"masked update"  # IPFS-pinnable as is
    assert store.get(cid) == b"masked update"
    assert store.put(b"masked update") == cid
    assert list(store) == [cid] and store.has(cid)
    assert sorted(os.listdir(store.root)) == [cid]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.binary(max_size=200), max_size=8))
def test_every_blob_comes_back(tmp_path_factory, blobs: list[bytes]) -> None:
    store = BlobStore(tmp_path_factory.mktemp("blobs"))
    cids = [store.put(b) for b in blobs]
    assert [store.get(c) for c in cids] == blobs
    assert list(store) == sorted(set(cids))


def test_altered_or_missing_blobs_are_refused(store: BlobStore) -> None:
    cid = store.put(b"aggregate")
    (store.root / cid).write_bytes(b"aggregatE")
    with pytest.raises(CIDMismatch, match=cid):
        store.get(cid)
    absent = cid_for(b"never stored")
    with pytest.raises(CIDMismatch, match="missing"):
        store.get(absent)
    assert not store.has(absent)


def test_put_repairs_a_damaged_copy(store: BlobStore) -> None:
    cid = store.put(b"model")
    (store.root / cid).write_bytes(b"")
    assert store.put(b"model") == cid
    assert store.get(cid) == b"model"


@pytest.mark.parametrize("cid", ["../../etc/passwd", "bafk", "", "B" * 59])
def test_bad_cids_never_touch_the_filesystem(store: BlobStore, cid: str) -> None:
    with pytest.raises(MalformedRecord):
        store.get(cid)
    with pytest.raises(MalformedRecord):
        store.has(cid)


def test_iteration_skips_temporary_and_foreign_files(store: BlobStore) -> None:
    cid = store.put(b"x")
    (store.root / ".tmp-abc").write_bytes(b"partial")
    (store.root / "README").write_text("hello")
    assert list(store) == [cid]


def test_failed_write_leaves_nothing(store: BlobStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"never half written")
    assert os.listdir(store.root) == []


def test_auditor_mode_does_not_create(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="does not exist"):
        BlobStore(tmp_path / "absent", create=False)
    assert not (tmp_path / "absent").exists()


def test_canonical_json_blobs(store: BlobStore) -> None:
    record = {"round": 3, "survivors": ["c1", "c2"], "epsilon": 0.75}
    cid = store.put_json(record)
    assert store.get_json(cid) == record
    assert store.put_json({"survivors": ["c1", "c2"], "epsilon": 0.75, "round": 3}) == cid
    spaced = store.put(b'{"round": 3}')
    with pytest.raises(MalformedRecord, match=f"blob {spaced}"):
        store.get_json(spaced)
    with pytest.raises(MalformedRecord):
        store.put_json({"bad": float("nan")})


def test_array_blobs_round_trip_exactly(store: BlobStore) -> None:
    rng = np.random.default_rng(7)
    arrays = {
        "masked": rng.integers(0, 2**32, size=1000, dtype=np.uint64).astype(np.uint32),
        "weights": rng.standard_normal((3, 4)),
        "count": np.array([5], dtype=np.int64),
    }
    cid = store.put_arrays(arrays, {"round": "2", "codec": "fixed-point-32"})
    loaded, metadata = store.get_arrays(cid)
    assert metadata == {"round": "2", "codec": "fixed-point-32"}
    assert set(loaded) == set(arrays)
    for name, array in arrays.items():
        assert loaded[name].dtype == array.dtype
        np.testing.assert_array_equal(loaded[name], array)
    # Same arrays, other insertion order: same bytes, same name.
    assert store.put_arrays(dict(reversed(list(arrays.items()))), {"codec": "fixed-point-32", "round": "2"}) == cid
    bare, none = store.get_arrays(store.put_arrays({"a": np.zeros(2)}))
    assert none == {} and list(bare) == ["a"]


def test_corrupt_safetensors_are_malformed(store: BlobStore) -> None:
    good = store.get(store.put_arrays({"w": np.arange(10, dtype=np.float32)}))
    for bad in (b"garbage", good[:-4], good[:8], b"\xff" * 8 + good[8:]):
        cid = store.put(bad)
        with pytest.raises(MalformedRecord, match=cid):
            store.get_arrays(cid)


def test_objects_cannot_be_stored_as_arrays(store: BlobStore) -> None:
    with pytest.raises(MalformedRecord, match="safetensors"):
        store.put_arrays({"o": np.array([object()], dtype=object)})
    with pytest.raises(MalformedRecord, match="str to str"):
        store.put_arrays({"a": np.zeros(1)}, {"round": 3})  # type: ignore[dict-item]


def test_sigkill_during_writes_leaves_only_whole_blobs(tmp_path: Path) -> None:
    """A writer killed at an arbitrary moment leaves every named blob intact."""
    root = tmp_path / "blobs"
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import os
                from bfl_private.ledger.blobstore import BlobStore
                store = BlobStore({str(root)!r})
                i = 0
                while True:
                    store.put(os.urandom(1 << 16) + i.to_bytes(8, "big"))
                    i += 1
                """
            ),
        ]
    )
    def finished() -> int:  # whole blobs so far, not the child's temporary file
        return len([n for n in os.listdir(root) if n.startswith("b")]) if root.exists() else 0

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and finished() < 20:
        time.sleep(0.02)
    child.send_signal(signal.SIGKILL)
    child.wait()
    store = BlobStore(root)
    cids = list(store)
    assert len(cids) >= 20
    for cid in cids:
        assert len(store.get(cid)) == (1 << 16) + 8
    store.put(b"after the crash")
