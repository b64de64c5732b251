"""libsodium-backed Ed25519 verification: RFC 8032 vectors, agreement with OpenSSL, refusals."""

from __future__ import annotations

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given, settings
from hypothesis import strategies as st

from bfl_private.primitives.ed25519 import verify_signature

# RFC 8032 §7.1, TEST 1 and TEST 2: (public key, message, signature).
RFC8032_VECTORS = [
    (
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    (
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
]


def _public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors_verify(public: str, message: str, signature: str) -> None:
    verify_signature(bytes.fromhex(public), bytes.fromhex(signature), bytes.fromhex(message))


@pytest.mark.parametrize(("public", "message", "signature"), RFC8032_VECTORS)
def test_rfc8032_vectors_with_any_flipped_bit_are_refused(
    public: str, message: str, signature: str
) -> None:
    raw = bytearray(bytes.fromhex(signature))
    raw[17] ^= 0x04
    with pytest.raises(InvalidSignature):
        verify_signature(bytes.fromhex(public), bytes(raw), bytes.fromhex(message))
    with pytest.raises(InvalidSignature):
        verify_signature(bytes.fromhex(public), bytes.fromhex(signature), b"\x00" + bytes.fromhex(message))


@settings(max_examples=50, deadline=None)
@given(message=st.binary(max_size=512), flip=st.integers(min_value=0, max_value=8 * 64 - 1))
def test_agrees_with_openssl_on_signatures_it_made(message: bytes, flip: int) -> None:
    key = Ed25519PrivateKey.generate()
    signature = key.sign(message)
    verify_signature(_public(key), signature, message)
    forged = bytearray(signature)
    forged[flip // 8] ^= 1 << (flip % 8)
    with pytest.raises(InvalidSignature):
        verify_signature(_public(key), bytes(forged), message)
    with pytest.raises(InvalidSignature):  # OpenSSL refuses it too
        key.public_key().verify(bytes(forged), message)


def test_wrong_key_wrong_lengths_and_small_order_keys_are_refused() -> None:
    key, other = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    signature = key.sign(b"m")
    with pytest.raises(InvalidSignature):
        verify_signature(_public(other), signature, b"m")
    with pytest.raises(InvalidSignature, match="32-byte key and a 64-byte signature"):
        verify_signature(_public(key)[:31], signature, b"m")
    with pytest.raises(InvalidSignature, match="32-byte key and a 64-byte signature"):
        verify_signature(_public(key), signature + b"\x00", b"m")
    # The identity point (encoded y = 1) has small order: any "signature" with R = identity
    # and S = 0 satisfies the cofactorless equation for it, so a verifier must refuse the key.
    identity_point = (1).to_bytes(32, "little")
    with pytest.raises(InvalidSignature):
        verify_signature(identity_point, identity_point + bytes(32), b"anything")
