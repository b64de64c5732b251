"""Ed25519 identities of ledger participants, named and identified as in C2SP signed notes.

A participant (coordinator, client, validator) is a *name* plus an Ed25519 key from
``cryptography``. The key id and the textual verifier key follow the C2SP signed-note
specification (https://c2sp.org/signed-note), so the same keys sign entries, block
certificates and checkpoints, and standard note tooling can check the latter:

* key name: non-empty, no Unicode whitespace, no ``+``;
* key id: the first 4 bytes of SHA-256(name || 0x0A || 0x01 || public key), 0x01 being the
  Ed25519 signature type;
* verifier key: ``name+hex(key id)+base64(0x01 || public key)``.

Like pyca/cryptography, keys are built only through explicit constructors
(``generate``, ``from_private_bytes``, ``from_public_bytes``, ``from_vkey``, ``from_json``),
and verification raises :class:`~bfl_private.ledger.errors.SignatureError`, never returns
a boolean.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..primitives.ed25519 import verify_signature
from .errors import MalformedRecord, SignatureError

#: Signature type byte of Ed25519 in C2SP signed notes.
ED25519_TYPE = 0x01
KEY_SIZE = 32
SIGNATURE_SIZE = 64
KEY_ID_SIZE = 4


def check_key_name(name: str) -> str:
    """Return ``name`` if it is a valid signed-note key name, else raise MalformedRecord."""
    if not isinstance(name, str) or not name:
        raise MalformedRecord(f"key name must be a non-empty string, got {name!r}")
    if "+" in name or any(ch.isspace() for ch in name):
        raise MalformedRecord(f"key name {name!r} contains whitespace or '+' (C2SP signed-note)")
    return name


def key_id_for(name: str, public_key: bytes) -> bytes:
    """C2SP signed-note key id: SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    digest = hashlib.sha256(
        name.encode("utf-8") + b"\n" + bytes([ED25519_TYPE]) + public_key
    ).digest()
    return digest[:KEY_ID_SIZE]


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, AttributeError) as exc:
        raise MalformedRecord(f"{what} is not valid base64: {exc}") from None


class VerifyingKey:
    """A named Ed25519 public key: the identity other parties check signatures against."""

    __slots__ = ("_key_id", "_name", "_raw")

    def __init__(self, name: str, key: Ed25519PublicKey) -> None:
        """Prefer :meth:`from_public_bytes`; this wraps an existing ``cryptography`` key."""
        self._name = check_key_name(name)
        self._raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self._key_id = key_id_for(self._name, self._raw)

    @classmethod
    def from_public_bytes(cls, name: str, raw: bytes) -> VerifyingKey:
        """Build from the raw 32-byte Ed25519 public key (RFC 8032 encoding)."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_SIZE:
            raise MalformedRecord(f"public key of {name!r} must be {KEY_SIZE} raw bytes")
        try:
            key = Ed25519PublicKey.from_public_bytes(bytes(raw))
        except ValueError as exc:
            raise MalformedRecord(
                f"public key of {name!r} is not an Ed25519 point: {exc}"
            ) from None
        return cls(name, key)

    @classmethod
    def from_vkey(cls, vkey: str) -> VerifyingKey:
        """Parse a signed-note verifier key ``name+hexid+base64(0x01||key)``, checking the id."""
        if not isinstance(vkey, str):
            raise MalformedRecord(f"verifier key must be a string, got {type(vkey).__name__}")
        parts = vkey.split("+", 2)
        if len(parts) != 3:
            raise MalformedRecord(f"verifier key {vkey!r} is not name+id+key")
        name, id_hex, key_b64 = parts
        check_key_name(name)
        if len(id_hex) != 2 * KEY_ID_SIZE or id_hex.lower() != id_hex:
            raise MalformedRecord(f"verifier key {vkey!r}: key id must be 8 lower-case hex digits")
        try:
            claimed_id = bytes.fromhex(id_hex)
        except ValueError:
            raise MalformedRecord(f"verifier key {vkey!r}: key id is not hex") from None
        blob = _b64decode(key_b64, f"verifier key {vkey!r}")
        if len(blob) != 1 + KEY_SIZE or blob[0] != ED25519_TYPE:
            raise MalformedRecord(f"verifier key {vkey!r} is not an Ed25519 (type 0x01) key")
        key = cls.from_public_bytes(name, blob[1:])
        if key.key_id != claimed_id:
            raise MalformedRecord(
                f"verifier key {vkey!r}: key id {id_hex} does not match name and key "
                f"({key.key_id_hex})"
            )
        return key

    @classmethod
    def from_json(cls, obj: Any) -> VerifyingKey:
        """Inverse of :meth:`to_json`: ``{"name": ..., "public_key": base64(raw key)}``."""
        if not isinstance(obj, dict) or set(obj) != {"name", "public_key"}:
            raise MalformedRecord(
                f"public key record must have exactly name and public_key: {obj!r}"
            )
        if not isinstance(obj["public_key"], str):
            raise MalformedRecord(f"public_key of {obj['name']!r} must be a base64 string")
        raw = _b64decode(obj["public_key"], f"public key of {obj['name']!r}")
        return cls.from_public_bytes(obj["name"], raw)

    def to_json(self) -> dict[str, str]:
        """A JSON-ready record (standard base64 of the raw key) for canonical entries."""
        return {"name": self._name, "public_key": base64.b64encode(self._raw).decode("ascii")}

    @property
    def name(self) -> str:
        return self._name

    def public_bytes(self) -> bytes:
        """The raw 32-byte public key."""
        return self._raw

    @property
    def key_id(self) -> bytes:
        """The 4-byte C2SP signed-note key id."""
        return self._key_id

    @property
    def key_id_hex(self) -> str:
        return self._key_id.hex()

    def vkey(self) -> str:
        """The signed-note verifier key string ``name+hex(key id)+base64(0x01 || key)``."""
        blob = bytes([ED25519_TYPE]) + self._raw
        return f"{self._name}+{self.key_id_hex}+{base64.b64encode(blob).decode('ascii')}"

    def verify(self, signature: bytes, data: bytes) -> None:
        """Check an Ed25519 signature over ``data``; raise SignatureError naming this key."""
        if not isinstance(signature, (bytes, bytearray)) or len(signature) != SIGNATURE_SIZE:
            raise SignatureError(
                f"signature by {self._name} (key id {self.key_id_hex}) must be "
                f"{SIGNATURE_SIZE} bytes"
            )
        try:
            verify_signature(self._raw, bytes(signature), bytes(data))
        except InvalidSignature:
            raise SignatureError(
                f"signature by {self._name} (key id {self.key_id_hex}) does not verify "
                f"over {len(data)} bytes"
            ) from None

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, VerifyingKey):
            return NotImplemented
        return self._name == other._name and self._raw == other._raw

    def __hash__(self) -> int:
        return hash((self._name, self._raw))

    def __repr__(self) -> str:
        return f"VerifyingKey({self.vkey()!r})"


class SigningIdentity:
    """A named Ed25519 private key. Its repr never shows the secret."""

    __slots__ = ("_key", "_name", "_public")

    def __init__(self, name: str, key: Ed25519PrivateKey) -> None:
        """Prefer :meth:`generate` or :meth:`from_private_bytes`."""
        self._name = check_key_name(name)
        self._key = key
        self._public = VerifyingKey(name, key.public_key())

    @classmethod
    def generate(cls, name: str) -> SigningIdentity:
        """A fresh key from the operating system's CSPRNG."""
        return cls(name, Ed25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, name: str, raw: bytes) -> SigningIdentity:
        """Load the raw 32-byte Ed25519 seed written by :meth:`private_bytes`."""
        if not isinstance(raw, (bytes, bytearray)) or len(raw) != KEY_SIZE:
            raise MalformedRecord(f"private key of {name!r} must be {KEY_SIZE} raw bytes")
        return cls(name, Ed25519PrivateKey.from_private_bytes(bytes(raw)))

    def private_bytes(self) -> bytes:
        """The raw 32-byte seed, for the owner's keyring only."""
        return self._key.private_bytes(
            serialization.Encoding.Raw,
            serialization.PrivateFormat.Raw,
            serialization.NoEncryption(),
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def public(self) -> VerifyingKey:
        return self._public

    def sign(self, data: bytes) -> bytes:
        """A 64-byte Ed25519 signature (RFC 8032, deterministic) over ``data``."""
        return self._key.sign(bytes(data))

    def __repr__(self) -> str:
        return f"SigningIdentity({self._name!r}, key id {self._public.key_id_hex})"
