"""Content-addressed blob store: one file per blob, named by its IPFS CIDv1.

Blobs are what the ledger's entries point to (masked updates, aggregates, models,
transcripts). The entry records the CID; the bytes live here as ``ROOT/<cid>``, so the
directory can be pinned to IPFS unchanged and an auditor can check every blob against its
name without trusting the writer. Two formats only, both inert data: safetensors for
arrays and RFC 8785 canonical JSON for records. Nothing is ever unpickled.

Writes are atomic (temporary file in the same directory, fsync, ``os.replace``, fsync of
the directory), so a crash leaves either no blob or the whole blob, never a torn one.
Reads always re-hash: a blob whose bytes do not match its name is an error, not data.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.numpy
from safetensors import SafetensorError

from .canonical import canonical_bytes, parse_canonical
from .cid import check_cid, cid_for, parse_cid
from .errors import CIDMismatch, MalformedRecord, StorageError

_TMP_PREFIX = ".tmp-"


def _fsync_dir(directory: Path) -> None:
    """Make a rename durable: fsync the directory entry (POSIX; no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sorted_header(data: bytes) -> bytes:
    """Rewrite a safetensors header with sorted keys, so equal content gives equal bytes.

    safetensors keeps ``__metadata__`` in a hash map whose order changes between calls; the
    format allows any key order and space padding, so sorting the header JSON (and padding
    it to the 8-byte alignment the format asks for) leaves the tensor bytes untouched and
    makes the blob, hence its CID, a function of the content alone.
    """
    (size,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + size :]


class BlobStore:
    """A directory of immutable blobs named by CIDv1 (raw, sha2-256, base32)."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        """Open ``root``; with ``create=False`` (auditors) a missing directory is a StorageError."""
        self.root = Path(root)
        self._root_text = str(self.root)
        if create:
            self.root.mkdir(parents=True, exist_ok=True)
        elif not self.root.is_dir():
            raise StorageError(f"blob directory {self.root} does not exist")

    def path_of(self, cid: str) -> Path:
        """Where the blob named ``cid`` lives; the CID is validated first, so no path tricks."""
        parse_cid(cid)
        return self.root / cid

    def put(self, data: bytes) -> str:
        """Store ``data`` and return its CID. Idempotent; a damaged copy is replaced."""
        data = bytes(data)
        cid = cid_for(data)
        target = self.root / cid
        try:
            check_cid(cid, target.read_bytes())
            return cid
        except (FileNotFoundError, CIDMismatch):
            pass
        fd, temporary = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=self.root)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        _fsync_dir(self.root)
        return cid

    def get(self, cid: str) -> bytes:
        """The bytes named ``cid``, re-hashed: CIDMismatch if missing or altered."""
        digest = parse_cid(cid)  # validated first, so no path tricks (as path_of)
        try:
            with open(os.path.join(self._root_text, cid), "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise CIDMismatch(f"blob {cid} is missing from {self.root}") from None
        except OSError as exc:
            raise StorageError(f"blob {cid} in {self.root} is unreadable: {exc}") from None
        if hashlib.sha256(data).digest() != digest:
            check_cid(cid, data)  # raises CIDMismatch with the reference message
        return data

    def has(self, cid: str) -> bool:
        """Whether a file named ``cid`` exists (its content is checked only by :meth:`get`)."""
        return self.path_of(cid).is_file()

    def __iter__(self) -> Iterator[str]:
        """The CIDs present, sorted; temporary and foreign files are skipped."""
        with os.scandir(self.root) as listing:
            found = sorted((entry.name, entry) for entry in listing)
        for name, entry in found:
            try:
                parse_cid(name)
            except MalformedRecord:
                continue
            if entry.is_file():  # follows symbolic links, as Path.is_file
                yield name

    # --- canonical JSON records --------------------------------------------------------

    def put_json(self, obj: Any) -> str:
        """Store ``obj`` as RFC 8785 canonical JSON; the CID then names the value itself."""
        return self.put(canonical_bytes(obj))

    def get_json(self, cid: str) -> Any:
        """Load a canonical-JSON blob; MalformedRecord if it is not canonical JSON."""
        return parse_canonical(self.get(cid), where=f"blob {cid}")

    # --- arrays as safetensors -----------------------------------------------------------

    def put_arrays(
        self, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None
    ) -> str:
        """Store named numeric arrays (and string metadata) as one safetensors blob.

        The bytes depend only on the content (names, dtypes, shapes, values, metadata), not on
        insertion order, so the same model or update always gets the same CID."""
        if metadata is not None and not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise MalformedRecord("safetensors metadata must map str to str")
        try:
            data = safetensors.numpy.save(
                {name: np.ascontiguousarray(a) for name, a in arrays.items()},
                metadata=dict(metadata) if metadata is not None else None,
            )
        except SafetensorError as exc:
            raise MalformedRecord(f"arrays cannot be stored as safetensors: {exc}") from None
        return self.put(_sorted_header(data))

    def get_arrays(self, cid: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        """Load a safetensors blob: (arrays, metadata). MalformedRecord if it does not parse."""
        data = self.get(cid)
        try:
            arrays = safetensors.numpy.load(data)
            (header_size,) = struct.unpack_from("<Q", data, 0)
            header = json.loads(data[8 : 8 + header_size])
        except (SafetensorError, struct.error, ValueError, KeyError, TypeError, OverflowError) as exc:
            # safetensors raises KeyError for a dtype numpy lacks (BF16), among others
            raise MalformedRecord(f"blob {cid} is not a valid safetensors file: {type(exc).__name__}: {exc}") from None
        metadata = header.get("__metadata__", {}) if isinstance(header, dict) else None
        if not isinstance(metadata, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
        ):
            raise MalformedRecord(f"blob {cid}: safetensors metadata is not a str->str map")
        return arrays, metadata
