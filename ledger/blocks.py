"""Block headers and their validator quorum certificates.

A block header *is* a C2SP tlog-checkpoint (https://c2sp.org/tlog-checkpoint): origin,
log size and RFC 9162 root after the block, followed by extension lines that bind the
block into its chain::

    bfl-private/<federation id>
    <log size>
    <base64 Merkle root>
    height <n>
    prev <base64 SHA-256 of the previous header body; 32 zero bytes for block 0>
    state <base64 contract state root after the block>
    time <unix seconds>

Validators sign exactly this body (``signing_bytes``) as an Ed25519 signed-note signature,
so a block's quorum certificate rendered by :func:`certificate_note` is a C2SP signed
note that note tooling and witnesses read like any checkpoint, and the certificate is
checked with :func:`bfl_private.ledger.checkpoint.verify_note` (at least ``quorum``
distinct validator keys, 2f+1 of 3f+1).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass

from .checkpoint import Checkpoint, verify_note
from .errors import MalformedRecord, QuorumError, SignatureError
from .identity import VerifyingKey
from .merkle import HASH_SIZE

ORIGIN_PREFIX = "bfl-private/"
GENESIS_PREV = bytes(HASH_SIZE)
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_EXTENSIONS = ("height", "prev", "state", "time")


def origin_for(federation_id: str) -> str:
    """The checkpoint origin line (the log's name) of a federation."""
    return ORIGIN_PREFIX + federation_id


def _b64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


@dataclass(frozen=True)
class BlockHeader:
    """What a quorum of validators signs for one block."""

    origin: str
    height: int
    size: int
    """Number of log entries after this block."""
    root: bytes
    """RFC 9162 Merkle root of the log after this block."""
    prev_hash: bytes
    """:meth:`hash` of the previous header (32 zero bytes for the genesis block)."""
    state_root: bytes
    """Root of the contract state after this block (``LedgerState.root``)."""
    time: int
    """Unix seconds, chosen by the proposer and non-decreasing along the chain."""

    def __post_init__(self) -> None:
        for name in ("height", "size", "time"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise MalformedRecord(f"block header {name} must be a non-negative int: {value!r}")
        for name in ("prev_hash", "state_root"):
            value = getattr(self, name)
            if not isinstance(value, bytes) or len(value) != HASH_SIZE:
                raise MalformedRecord(f"block header {name} must be {HASH_SIZE} bytes")

    def checkpoint(self) -> Checkpoint:
        """The header as a C2SP checkpoint (validates origin and root)."""
        return Checkpoint(self.origin, self.size, self.root, (
            f"height {self.height}",
            f"prev {_b64(self.prev_hash)}",
            f"state {_b64(self.state_root)}",
            f"time {self.time}",
        ))

    def signing_bytes(self) -> bytes:
        """The checkpoint body every validator signs (and the header's stored form)."""
        return self.checkpoint().body()

    def hash(self) -> bytes:
        """SHA-256 of :meth:`signing_bytes`; the next header's ``prev_hash``."""
        return hashlib.sha256(self.signing_bytes()).digest()

    @classmethod
    def from_bytes(cls, data: bytes, *, where: str) -> BlockHeader:
        """Parse a stored header; MalformedRecord naming ``where`` unless canonical."""
        try:
            cp = Checkpoint.from_body(data)
        except MalformedRecord as exc:
            raise MalformedRecord(f"{where}: {exc}") from None
        fields: dict[str, str] = {}
        for line in cp.extensions:
            name, _, value = line.partition(" ")
            fields[name] = value
        if tuple(fields) != _EXTENSIONS or len(cp.extensions) != len(_EXTENSIONS):
            raise MalformedRecord(f"{where}: header extension lines must be "
                                  f"{', '.join(_EXTENSIONS)} in order, got {list(cp.extensions)}")
        for name in ("height", "time"):
            if not _DECIMAL.fullmatch(fields[name]):
                raise MalformedRecord(f"{where}: header {name} {fields[name]!r} is not a decimal")
        hashes = {}
        for name in ("prev", "state"):
            try:
                hashes[name] = base64.b64decode(fields[name].encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                raise MalformedRecord(f"{where}: header {name} is not base64") from None
        header = cls(cp.origin, int(fields["height"]), cp.size, cp.root, hashes["prev"],
                     hashes["state"], int(fields["time"]))
        if header.signing_bytes() != bytes(data):
            raise MalformedRecord(f"{where}: header is not in canonical form")
        return header


@dataclass(frozen=True)
class Block:
    """A committed block: its header, its validators' cosignatures and where its entries start."""

    header: BlockHeader
    signatures: Mapping[str, bytes]
    """Validator key id (hex) -> Ed25519 signature over ``header.signing_bytes()``."""
    first_entry: int
    """Log index of the block's first entry (the previous block's log size)."""

    @property
    def height(self) -> int:
        return self.header.height

    @property
    def entry_range(self) -> range:
        """Log indices of the block's entries."""
        return range(self.first_entry, self.header.size)


def note_checkpoint(note: str) -> Checkpoint:
    """The checkpoint a signed note carries (its text before the last blank line).

    Signatures are not checked here (that is ``checkpoint.verify_note``); this only reads
    which tree the note talks about. MalformedRecord if it is not a checkpoint note.
    """
    split = note.rfind("\n\n") if isinstance(note, str) else -1
    if split < 0:
        raise MalformedRecord("a signed checkpoint note needs a blank line before its signatures")
    return Checkpoint.from_body(note[: split + 1].encode("utf-8"))


def certificate_note(
    header: BlockHeader, signatures: Mapping[str, bytes], validators: Mapping[str, VerifyingKey]
) -> str:
    """The block as a C2SP signed note: header body, blank line, one line per cosignature.

    ``signatures`` maps validator key id (hex) to its raw Ed25519 signature over
    :meth:`BlockHeader.signing_bytes`; lines are ordered by key id. A key id that is not
    a validator's raises SignatureError (nothing unknown is written into a certificate).
    """
    lines = []
    for key_id in sorted(signatures):
        key = validators.get(key_id)
        if key is None:
            raise SignatureError(f"block {header.height}: cosignature by key {key_id}, "
                                 f"which is not a registered validator")
        blob = key.key_id + bytes(signatures[key_id])
        lines.append(f"\u2014 {key.name} {_b64(blob)}\n")
    return header.signing_bytes().decode("utf-8") + "\n" + "".join(lines)


def verify_certificate(
    header: BlockHeader,
    signatures: Mapping[str, bytes],
    *,
    validators: Mapping[str, VerifyingKey],
    quorum: int,
) -> None:
    """Check a block's quorum certificate: every cosignature valid, at least ``quorum``.

    Raises SignatureError (an invalid or unknown cosignature) or QuorumError (too few),
    with the block height in the message.
    """
    if not signatures:
        raise QuorumError(f"block {header.height}: no cosignatures, quorum is {quorum}")
    note = certificate_note(header, signatures, validators)
    try:
        verify_note(note, verifiers=list(validators.values()), quorum=quorum)
    except (SignatureError, QuorumError) as exc:
        raise type(exc)(f"block {header.height}: {exc}") from None
