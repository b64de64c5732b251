"""Typed messages of the masking protocol and their one canonical byte encoding.

Every message is ``MAGIC ‖ kind u8 ‖ round u64 ‖ party u32 ‖ body``, integers big-endian,
id lists strictly increasing, so each message has exactly one encoding and anything else
(truncation, trailing bytes, disorder, a duplicate entry, a foreign kind) is refused on
receipt with a :class:`MalformedInput` naming the message and the byte offset.

The share bundle (kind 2) also carries the sender's commitment to its self-mask seed,
``SHA-256("bfl-private/secagg/v1/self-mask-commitment" ‖ round u64 ‖ client u32 ‖ b_u)``,
and its Ed25519 signature over :func:`commitment_payload` (round and sender bound in).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from . import keyagreement as ka
from . import shamir
from .errors import MalformedInput, ReplayedMessage
from .masking_graph import MaskingParams
from .prg import SEED_BYTES

SERVER = 0xFFFFFFFF
"""The party number of the server in message headers."""

# Wire format: MAGIC ‖ kind u8 ‖ round u64 ‖ party u32 ‖ body, all integers big-endian,
# id lists strictly increasing (so each message has exactly one encoding).

_MAGIC = b"BSA1"
_HEADER = struct.Struct(">4sBQI")
_SEALED_SHARE_BYTES = ka.NONCE_BYTES + 8 + 2 * shamir.SHARE_BYTES + ka.TAG_BYTES
COMMITMENT_BYTES = 32
"""Width of a self-mask seed commitment (SHA-256)."""
_COMMITMENT_TAG = b"bfl-private/secagg/v1/self-mask-commitment"


_ADVERTISEMENT = struct.Struct(f">4sBQI{ka.KEY_BYTES}s{ka.KEY_BYTES}s{ka.SIGNATURE_BYTES}s")


def _header(kind: int, round_id: int, party: int) -> bytes:
    return _HEADER.pack(_MAGIC, kind, round_id, party)


class _Reader:
    """Bounds-checked parser: every shortfall or leftover is a MalformedInput naming ``what``."""

    def __init__(self, data: bytes | memoryview, what: str) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise MalformedInput(f"{what}: expected bytes, got {type(data).__name__}")
        self.data = memoryview(data).cast("B")
        self.pos = 0
        self.what = what

    def take(self, n: int) -> memoryview:
        if self.pos + n > len(self.data):
            raise MalformedInput(
                f"{self.what}: truncated at byte {self.pos} (needs {n} more, has {len(self.data) - self.pos})"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def u32(self) -> int:
        return int.from_bytes(self.take(4), "big")

    def header(self, kind: int) -> tuple[int, int]:
        magic, got, round_id, party = _HEADER.unpack(self.take(_HEADER.size))
        if magic != _MAGIC or got != kind:
            raise MalformedInput(
                f"{self.what}: not a message of this kind (magic {magic!r}, kind {got}, expected {kind})"
            )
        return round_id, party

    def packed(self, width: int) -> PackedItems:
        """An id list (``count u32 ‖ (id u32 ‖ width bytes)*``), checked without a Python loop.

        The ids are read and their strict order checked with numpy, and the entries stay
        in the message: a client that needs a few entries of a list of N (the signature
        list, the survivor set) pays C speed for the N, Python speed only for its few.
        """
        count = self.u32()
        stride = 4 + width
        if count * stride > len(self.data) - self.pos:
            raise MalformedInput(f"{self.what}: claims {count} entries but is truncated")
        block = self.take(count * stride)
        ids = np.ndarray((count,), dtype=">u4", buffer=block, strides=(stride,)).astype(np.int64)
        if count > 1:
            disorder = np.flatnonzero(ids[1:] <= ids[:-1])
            if disorder.size:
                ident = int(ids[disorder[0] + 1])
                raise MalformedInput(f"{self.what}: party {ident} listed twice or out of order")
        return PackedItems(ids, block, width)

    def items(self, width: int) -> tuple[tuple[int, bytes], ...]:
        return self.packed(width).to_tuple()

    def ids(self) -> tuple[int, ...]:
        return tuple(self.packed(0).ids.tolist())

    def done(self) -> None:
        if self.pos != len(self.data):
            raise MalformedInput(f"{self.what}: {len(self.data) - self.pos} trailing bytes")


class PackedItems:
    """A parsed id list left in its message: ``ids`` (strictly increasing, int64) and the
    entry bytes, read on demand. :meth:`to_tuple` gives the ``((id, bytes), ...)`` form."""

    __slots__ = ("ids", "_block", "_width")

    def __init__(self, ids: np.ndarray, block: memoryview, width: int) -> None:
        self.ids = ids
        self._block = block
        self._width = width

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def entry(self, position: int) -> bytes:
        """The bytes of the entry at ``position`` (an index into :attr:`ids`)."""
        at = position * (4 + self._width) + 4
        return bytes(self._block[at : at + self._width])

    def find(self, ident: int) -> int | None:
        """Position of ``ident`` in :attr:`ids`, or None (binary search)."""
        position = int(np.searchsorted(self.ids, ident))
        if position < len(self) and self.ids[position] == ident:
            return position
        return None

    def to_tuple(self) -> tuple[tuple[int, bytes], ...]:
        block, stride = bytes(self._block), 4 + self._width
        return tuple(
            (ident, block[at + 4 : at + stride])
            for ident, at in zip(self.ids.tolist(), range(0, len(block), stride))
        )


def _pack_items(items: Sequence[tuple[int, bytes]]) -> bytes:
    count = len(items)
    if count == 0:
        return bytes(4)
    ids, entries = zip(*items)
    body = b"".join(entries)
    width = len(body) // count
    if width * count != len(body) or any(len(e) != width for e in entries):
        # Entries of unequal widths: the plain way (no message of ours has them).
        return struct.pack(">I", count) + b"".join(
            struct.pack(">I", i) + data for i, data in items
        )
    # Same bytes as the plain way, laid out with numpy: a round packs N-entry lists.
    out = np.empty((count, 4 + width), dtype=np.uint8)
    out[:, :4] = np.asarray(ids, dtype=">u4").view(np.uint8).reshape(count, 4)
    if width:
        out[:, 4:] = np.frombuffer(body, dtype=np.uint8).reshape(count, width)
    return struct.pack(">I", count) + out.tobytes()


def _pack_ids(ids: Sequence[int] | np.ndarray) -> bytes:
    array = np.sort(np.asarray(ids, dtype=np.int64))
    if array.size and (array[0] < 0 or array[-1] > 0xFFFFFFFF):
        raise MalformedInput("party ids must fit in 32 bits")
    return struct.pack(">I", array.shape[0]) + array.astype(">u4").tobytes()


@dataclass(frozen=True)
class KeyAdvertisement:
    """Stage 1, client -> server -> neighbours: the two public keys, signed."""

    KIND: ClassVar[int] = 1
    round_id: int
    sender: int
    cipher_key: bytes
    mask_key: bytes
    signature: bytes

    def signed_bytes(self) -> bytes:
        return _header(self.KIND, self.round_id, self.sender) + self.cipher_key + self.mask_key

    def to_bytes(self) -> bytes:
        return self.signed_bytes() + self.signature

    @classmethod
    def from_bytes(cls, data: bytes) -> KeyAdvertisement:
        # Every client parses k of these: one unpack when the width and header are right,
        # the bounds-checked reader (with its error messages) otherwise. Same result.
        if type(data) is bytes and len(data) == _ADVERTISEMENT.size:
            magic, kind, round_id, sender, cipher_key, mask_key, signature = _ADVERTISEMENT.unpack(
                data
            )
            if magic == _MAGIC and kind == cls.KIND:
                return cls(round_id, sender, cipher_key, mask_key, signature)
        r = _Reader(data, "key advertisement")
        round_id, sender = r.header(cls.KIND)
        keys = bytes(r.take(2 * ka.KEY_BYTES))
        signature = bytes(r.take(ka.SIGNATURE_BYTES))
        r.done()
        return cls(round_id, sender, keys[: ka.KEY_BYTES], keys[ka.KEY_BYTES :], signature)


@dataclass(frozen=True)
class SealedShares:
    """Stage 2: sealed share pairs, from a sender (kind 2) or delivered to a receiver (kind 3).

    ``party`` is the sender of a bundle or the receiver of a delivery; ``items`` maps the
    other end (receiver, resp. sender) to the sealed (b-share, s-share) pair.

    A bundle ends with the sender's self-mask seed ``commitment`` (32 bytes) and its
    ``signature`` (64 bytes) over :func:`commitment_payload`; a delivery carries neither
    (both empty). Any other width is refused, so the encoding stays canonical.
    """

    kind: int
    round_id: int
    party: int
    items: tuple[tuple[int, bytes], ...]
    commitment: bytes = b""
    signature: bytes = b""

    BUNDLE: ClassVar[int] = 2
    DELIVERY: ClassVar[int] = 3

    def to_bytes(self) -> bytes:
        if self.kind == self.BUNDLE:
            if (
                len(self.commitment) != COMMITMENT_BYTES
                or len(self.signature) != ka.SIGNATURE_BYTES
            ):
                raise MalformedInput(
                    f"share bundle of client {self.party} needs a {COMMITMENT_BYTES}-byte commitment and a "
                    f"{ka.SIGNATURE_BYTES}-byte signature, got {len(self.commitment)} and {len(self.signature)}"
                )
        elif self.commitment or self.signature:
            raise MalformedInput("a share delivery carries no commitment or signature")
        return (
            _header(self.kind, self.round_id, self.party)
            + _pack_items(self.items)
            + self.commitment
            + self.signature
        )

    @classmethod
    def from_bytes(cls, data: bytes, kind: int) -> SealedShares:
        r = _Reader(data, "share bundle" if kind == cls.BUNDLE else "share delivery")
        round_id, party = r.header(kind)
        items = r.items(_SEALED_SHARE_BYTES)
        commitment = signature = b""
        if kind == cls.BUNDLE:
            commitment = bytes(r.take(COMMITMENT_BYTES))
            signature = bytes(r.take(ka.SIGNATURE_BYTES))
        r.done()
        return cls(kind, round_id, party, items, commitment, signature)


@dataclass(frozen=True)
class MaskedInput:
    """Stage 3, client -> server: the masked uint32 vector.

    Layout: header ‖ 3 zero bytes ‖ length u32 ‖ length little-endian uint32 words; the
    padding puts the words on a 4-byte boundary so both ends use them in place.
    """

    KIND: ClassVar[int] = 4
    _PREFIX: ClassVar[int] = _HEADER.size + 3 + 4
    round_id: int
    sender: int
    vector: np.ndarray

    @classmethod
    def frame(cls, round_id: int, sender: int, length: int) -> tuple[memoryview, np.ndarray]:
        """A message buffer and the uint32 view of its body, to mask the input in place.

        Building the message where the vector is computed avoids copying megabytes into
        a fresh ``bytes`` object (whose page faults cost more than the copy).
        """
        buffer = np.empty(cls._PREFIX + 4 * length, dtype=np.uint8)
        buffer[: cls._PREFIX] = np.frombuffer(
            _header(cls.KIND, round_id, sender) + bytes(3) + struct.pack(">I", length),
            dtype=np.uint8,
        )
        return memoryview(buffer.data), buffer[cls._PREFIX :].view("<u4")

    def to_bytes(self) -> bytes:
        message, body = self.frame(self.round_id, self.sender, self.vector.shape[0])
        body[:] = self.vector
        return message.tobytes()

    @classmethod
    def from_bytes(cls, data: bytes | memoryview) -> MaskedInput:
        r = _Reader(data, "masked input")
        round_id, sender = r.header(cls.KIND)
        if bytes(r.take(3)) != bytes(3):
            raise MalformedInput(f"masked input of client {sender}: padding bytes must be zero")
        length = r.u32()
        vector = np.frombuffer(r.take(4 * length), dtype="<u4")
        r.done()
        return cls(round_id, sender, vector)


@dataclass(frozen=True)
class SurvivorSet:
    """Stage 4, server -> clients: U3, the clients whose masked input arrived."""

    KIND: ClassVar[int] = 5
    round_id: int
    survivors: tuple[int, ...]

    def to_bytes(self) -> bytes:
        return _header(self.KIND, self.round_id, SERVER) + _pack_ids(self.survivors)

    @classmethod
    def from_bytes(cls, data: bytes) -> SurvivorSet:
        round_id, survivors = cls.decode(data)
        return cls(round_id, tuple(survivors.tolist()))

    @staticmethod
    def decode(data: bytes) -> tuple[int, np.ndarray]:
        """The round and U3 as a sorted int64 array (same checks as :meth:`from_bytes`)."""
        r = _Reader(data, "survivor set")
        round_id, _ = r.header(SurvivorSet.KIND)
        survivors = r.packed(0).ids
        r.done()
        return round_id, survivors


@dataclass(frozen=True)
class Acknowledgements:
    """Stage 4: one client's signature over U3 (kind 6), or the server's list of them (kind 7)."""

    kind: int
    round_id: int
    party: int
    signatures: tuple[tuple[int, bytes], ...]

    SINGLE: ClassVar[int] = 6
    LIST: ClassVar[int] = 7

    def to_bytes(self) -> bytes:
        return _header(self.kind, self.round_id, self.party) + _pack_items(self.signatures)

    @classmethod
    def from_bytes(cls, data: bytes, kind: int) -> Acknowledgements:
        round_id, party, signatures = cls.decode(data, kind)
        return cls(kind, round_id, party, signatures.to_tuple())

    @classmethod
    def decode(cls, data: bytes, kind: int) -> tuple[int, int, PackedItems]:
        """Round, party and the signatures left packed (same checks as :meth:`from_bytes`)."""
        r = _Reader(data, "survivor-set signature" if kind == cls.SINGLE else "signature list")
        round_id, party = r.header(kind)
        signatures = r.packed(ka.SIGNATURE_BYTES)
        r.done()
        if kind == cls.SINGLE and signatures.ids.tolist() != [party]:
            raise MalformedInput(
                f"survivor-set signature of client {party} must carry exactly its own signature"
            )
        return round_id, party, signatures


@dataclass(frozen=True)
class UnmaskResponse:
    """Stage 4, client -> server: b-shares of surviving and s-shares of dropped neighbours."""

    KIND: ClassVar[int] = 8
    round_id: int
    sender: int
    self_mask_shares: tuple[tuple[int, bytes], ...]
    mask_key_shares: tuple[tuple[int, bytes], ...]

    def to_bytes(self) -> bytes:
        return (
            _header(self.KIND, self.round_id, self.sender)
            + _pack_items(self.self_mask_shares)
            + _pack_items(self.mask_key_shares)
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> UnmaskResponse:
        r = _Reader(data, "unmask response")
        round_id, sender = r.header(cls.KIND)
        b_shares = r.items(shamir.SHARE_BYTES)
        s_shares = r.items(shamir.SHARE_BYTES)
        r.done()
        if {i for i, _ in b_shares} & {i for i, _ in s_shares}:
            raise MalformedInput(
                f"unmask response of client {sender} reveals both shares of one peer"
            )
        return cls(round_id, sender, b_shares, s_shares)


def survivor_payload(round_id: int, survivors: Sequence[int]) -> bytes:
    return b"survivors" + struct.pack(">Q", round_id) + _pack_ids(survivors)


def self_mask_commitment(round_id: int, client: int, seed: bytes) -> bytes:
    """SHA-256(tag ‖ round u64 ‖ client u32 ‖ b_u): binds a self-mask seed to its owner and round."""
    if len(seed) != SEED_BYTES:
        raise MalformedInput(
            f"self-mask seed of client {client} must be {SEED_BYTES} bytes, got {len(seed)}"
        )
    return hashlib.sha256(_COMMITMENT_TAG + struct.pack(">QI", round_id, client) + seed).digest()


def commitment_payload(round_id: int, client: int, commitment: bytes) -> bytes:
    """What a client signs over its self-mask seed commitment (round and sender bound in)."""
    if len(commitment) != COMMITMENT_BYTES:
        raise MalformedInput(
            f"self-mask commitment of client {client} must be {COMMITMENT_BYTES} bytes, got {len(commitment)}"
        )
    return b"self-mask commitment" + struct.pack(">QI", round_id, client) + commitment


def share_associated_data(round_id: int, sender: int, receiver: int) -> bytes:
    return b"shares" + struct.pack(">QII", round_id, sender, receiver)


def check_round(params: MaskingParams, round_id: int, what: str) -> None:
    if round_id != params.round_id:
        raise ReplayedMessage(
            f"{what} is bound to round {round_id}, this is round {params.round_id}"
        )
