"""Key agreement, key derivation, share encryption and signatures for secure aggregation.

Every key is derived for one use and bound to it (Bonawitz et al., CCS 2017, §4):

* pairwise mask seed s_uv = HKDF-SHA256(X25519(s_u, S_v), info = "mask" ‖ round ‖ min(u,v)
  ‖ max(u,v)), 16 bytes (RFC 7748 §6.1, RFC 5869): both ends derive the same seed;
* share-encryption key k_u→v = HKDF-SHA256(X25519(c_u, C_v), info = "share" ‖ round ‖ u ‖ v),
  32 bytes for AES-256-GCM (NIST SP 800-38D): direction matters, so u→v and v→u differ;
* advertisements and survivor-set acknowledgements are Ed25519 signatures (RFC 8032)
  under the client's long-term identity key, over a domain-separated message.

Failures are named: a malformed key is :class:`MalformedInput`, a signature or an
authentication tag that does not verify is :class:`BadSignature`.

Per-round keys and signing go through libsodium (PyNaCl) where it is the cheaper of the
two libraries for the same bytes (X25519 is RFC 7748 and Ed25519 signatures are
deterministic, RFC 8032, so both libraries give identical outputs; tested):
:class:`X25519Key` (a round's key pair as raw bytes, 17 µs to generate against OpenSSL's
34 µs) and :class:`Signer` (19 µs a signature against 31 µs). :func:`agree` takes either
that or ``cryptography``'s key object.
"""

from __future__ import annotations

import os
import struct

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from nacl.bindings import crypto_scalarmult, crypto_scalarmult_base, crypto_sign
from nacl.exceptions import CryptoError

from ..primitives.ed25519 import verify_signature
from .errors import BadSignature, MalformedInput
from .prg import SEED_BYTES

DOMAIN = b"bfl-private/secagg/v1/"
KEY_BYTES = 32
SIGNATURE_BYTES = 64
NONCE_BYTES = 12
TAG_BYTES = 16


class X25519Key:
    """An X25519 key pair held as raw bytes: ``private`` (clamped, RFC 7748 §5, as OpenSSL
    stores a generated key) and ``public``. What a client generates fresh each round."""

    __slots__ = ("private", "public")

    def __init__(self, private: bytes) -> None:
        if len(private) != KEY_BYTES:
            raise MalformedInput(f"X25519 private key must be {KEY_BYTES} bytes, got {len(private)}")
        clamped = bytearray(private)
        clamped[0] &= 248
        clamped[31] = (clamped[31] & 127) | 64
        self.private = bytes(clamped)
        self.public = crypto_scalarmult_base(self.private)

    @classmethod
    def generate(cls) -> X25519Key:
        return cls(os.urandom(KEY_BYTES))


class Signer:
    """Signs with an Ed25519 identity key through libsodium (same signatures as
    :func:`sign`: Ed25519 is deterministic); the key is expanded once, not per signature."""

    __slots__ = ("_secret",)

    def __init__(self, identity: Ed25519PrivateKey) -> None:
        seed = identity.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        self._secret = seed + public_bytes(identity)

    def sign(self, message: bytes) -> bytes:
        return crypto_sign(DOMAIN + message, self._secret)[:SIGNATURE_BYTES]


def public_bytes(key: X25519PrivateKey | Ed25519PrivateKey | X25519Key) -> bytes:
    """Raw 32-byte public key."""
    if type(key) is X25519Key:
        return key.public
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(key: X25519PrivateKey | X25519Key) -> bytes:
    """Raw 32-byte X25519 private key (what a client Shamir-shares)."""
    if type(key) is X25519Key:
        return key.private
    return key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())


def x25519_private_from_bytes(data: bytes, *, what: str) -> X25519PrivateKey:
    if len(data) != KEY_BYTES:
        raise MalformedInput(
            f"{what}: X25519 private key must be {KEY_BYTES} bytes, got {len(data)}"
        )
    return X25519PrivateKey.from_private_bytes(data)


def x25519_public_from_bytes(data: bytes, *, what: str) -> X25519PublicKey:
    if len(data) != KEY_BYTES:
        raise MalformedInput(
            f"{what}: X25519 public key must be {KEY_BYTES} bytes, got {len(data)}"
        )
    return X25519PublicKey.from_public_bytes(data)


def agree(private: X25519PrivateKey | X25519Key, peer_public: bytes, *, what: str) -> bytes:
    """Raw X25519 shared secret; feed it to :func:`share_key`, never use it directly.

    A low-order peer key (all-zero output, RFC 7748 §6.1) is refused by either library.
    """
    if type(private) is X25519Key:
        if len(peer_public) != KEY_BYTES:
            raise MalformedInput(
                f"{what}: X25519 public key must be {KEY_BYTES} bytes, got {len(peer_public)}"
            )
        try:
            return crypto_scalarmult(private.private, bytes(peer_public))
        except (CryptoError, RuntimeError) as exc:  # libsodium refuses small-order points
            raise MalformedInput(f"{what}: key agreement refused: {exc}") from exc
    try:
        return private.exchange(x25519_public_from_bytes(peer_public, what=what))
    except ValueError as exc:  # all-zero output: a low-order peer key (RFC 7748 §6.1)
        raise MalformedInput(f"{what}: key agreement refused: {exc}") from exc


def _hkdf(secret: bytes, info: bytes, length: int) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=None, info=DOMAIN + info).derive(
        secret
    )


def mask_seed(
    private: X25519PrivateKey | X25519Key, peer_public: bytes, *, round_id: int, a: int, b: int
) -> bytes:
    """The pairwise mask seed of clients ``a`` and ``b`` (symmetric in a, b)."""
    low, high = min(a, b), max(a, b)
    shared = agree(private, peer_public, what=f"mask key of clients {low} and {high}")
    return _hkdf(shared, b"mask" + struct.pack(">QII", round_id, low, high), SEED_BYTES)


def share_key(shared: bytes, *, round_id: int, sender: int, receiver: int) -> bytes:
    """The AES-256-GCM key for shares sent from ``sender`` to ``receiver`` in ``round_id``.

    ``shared`` is :func:`agree` of the two cipher keys; one agreement serves both
    directions, the HKDF info separates them.
    """
    return _hkdf(shared, b"share" + struct.pack(">QII", round_id, sender, receiver), KEY_BYTES)


def seal(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """``nonce ‖ AES-GCM(plaintext)``; a random nonce although each key seals one message."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def open_sealed(key: bytes, sealed: bytes, associated: bytes, *, what: str) -> bytes:
    if len(sealed) < NONCE_BYTES + TAG_BYTES:
        raise MalformedInput(f"{what}: sealed message of {len(sealed)} bytes is truncated")
    try:
        return AESGCM(key).decrypt(sealed[:NONCE_BYTES], sealed[NONCE_BYTES:], associated)
    except InvalidTag:
        raise BadSignature(
            f"{what}: AES-GCM authentication failed (tampered, or bound to another round, sender or receiver)"
        ) from None


def sign(identity: Ed25519PrivateKey, message: bytes) -> bytes:
    return identity.sign(DOMAIN + message)


def verify(identity_public: bytes, signature: bytes, message: bytes, *, what: str) -> None:
    """Raise :class:`BadSignature` unless ``signature`` is the identity key's over ``message``."""
    if len(identity_public) != KEY_BYTES:
        raise MalformedInput(
            f"{what}: Ed25519 public key must be {KEY_BYTES} bytes, got {len(identity_public)}"
        )
    if len(signature) != SIGNATURE_BYTES:
        raise MalformedInput(
            f"{what}: signature must be {SIGNATURE_BYTES} bytes, got {len(signature)}"
        )
    try:
        verify_signature(identity_public, signature, DOMAIN + message)
    except InvalidSignature:
        raise BadSignature(
            f"{what}: Ed25519 signature does not verify under the client's identity key"
        ) from None
