"""IPFS content identifiers for blobs: CIDv1, raw codec, sha2-256, multibase base32.

Blob names are exactly what ``ipfs add --cid-version=1 --raw-leaves`` prints for a file
that fits in one block, so a blob directory can be pinned to IPFS unchanged:

    cid = "b" + base32_lower_nopad(0x01 || 0x55 || 0x12 || 0x20 || sha256(data))

(multibase prefix ``b`` = RFC 4648 base32 lower-case without padding; 0x01 = CID version
1; 0x55 = multicodec ``raw``; 0x12 0x20 = multihash sha2-256 with a 32-byte digest;
see https://github.com/multiformats/cid). Only this one form is accepted, so one blob has
one name.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import re

from .errors import CIDMismatch, MalformedRecord

MULTIBASE_BASE32 = "b"
#: CID version 1, multicodec raw, multihash sha2-256, digest length 32.
PREFIX = bytes([0x01, 0x55, 0x12, 0x20])
DIGEST_SIZE = 32
#: Length of the text form: "b" + 58 base32 characters for 36 bytes.
CID_LENGTH = 1 + (8 * (len(PREFIX) + DIGEST_SIZE) + 4) // 5


def cid_for(data: bytes) -> str:
    """The CIDv1 (raw, sha2-256, base32) naming ``data``."""
    digest = hashlib.sha256(bytes(data)).digest()
    encoded = base64.b32encode(PREFIX + digest).decode("ascii").rstrip("=").lower()
    return MULTIBASE_BASE32 + encoded


_BASE32_LOWER = "abcdefghijklmnopqrstuvwxyz234567"
_TO_INT_DIGITS = str.maketrans(_BASE32_LOWER, "0123456789abcdefghijklmnopqrstuv")
_CANONICAL_TEXT = re.compile(rf"{MULTIBASE_BASE32}[a-z2-7]{{{CID_LENGTH - 1}}}")
_SPARE_BITS = 5 * (CID_LENGTH - 1) - 8 * (len(PREFIX) + DIGEST_SIZE)


def parse_cid(cid: str) -> bytes:
    """Return the sha2-256 digest inside ``cid``; MalformedRecord for any other CID form.

    The verifier parses every CID several times (entries, blob names, reads), so a text of
    the one canonical shape is decoded as a base-32 integer at C speed; anything else takes
    the reference path below, which accepts exactly the same strings and names the fault.
    """
    if isinstance(cid, str) and _CANONICAL_TEXT.fullmatch(cid):
        value = int(cid[1:].translate(_TO_INT_DIGITS), 32)
        if not value & ((1 << _SPARE_BITS) - 1):
            raw = (value >> _SPARE_BITS).to_bytes(len(PREFIX) + DIGEST_SIZE, "big")
            if raw[: len(PREFIX)] == PREFIX:
                return raw[len(PREFIX):]
    return _parse_cid_reference(cid)


def _parse_cid_reference(cid: str) -> bytes:
    """:func:`parse_cid` spelled out with the standard library's base32 (slow, precise errors)."""
    if not isinstance(cid, str):
        raise MalformedRecord(f"CID must be a string, got {type(cid).__name__}")
    if len(cid) != CID_LENGTH or not cid.startswith(MULTIBASE_BASE32):
        raise MalformedRecord(
            f"CID {cid!r} is not a {CID_LENGTH}-character base32 CIDv1 (prefix 'b')"
        )
    body = cid[1:]
    if body != body.lower():
        raise MalformedRecord(f"CID {cid!r} must be lower-case base32")
    padded = body.upper() + "=" * (-len(body) % 8)
    try:
        raw = base64.b32decode(padded.encode("ascii"))
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise MalformedRecord(f"CID {cid!r} is not valid base32: {exc}") from None
    if not raw.startswith(PREFIX) or len(raw) != len(PREFIX) + DIGEST_SIZE:
        raise MalformedRecord(
            f"CID {cid!r} is not CIDv1 raw sha2-256 (header {raw[:4].hex()}, "
            f"expected {PREFIX.hex()})"
        )
    # base32 leaves 2 spare bits in the last character; only the zero form is canonical.
    if MULTIBASE_BASE32 + base64.b32encode(raw).decode("ascii").rstrip("=").lower() != cid:
        raise MalformedRecord(f"CID {cid!r} has non-zero padding bits")
    return raw[len(PREFIX):]


def check_cid(cid: str, data: bytes) -> None:
    """Raise CIDMismatch unless ``data`` hashes to ``cid`` (MalformedRecord if ``cid`` is bad)."""
    digest = parse_cid(cid)
    actual = hashlib.sha256(bytes(data)).digest()
    if actual != digest:
        raise CIDMismatch(
            f"blob {cid}: {len(data)} bytes hash to {cid_for(data)}, not to their name"
        )
