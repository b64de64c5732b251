"""Ed25519 identities: RFC 8032 and Go signed-note known answers, refusals of bad keys."""
from __future__ import annotations

import base64

import pytest

from bfl_private.ledger.errors import MalformedRecord, SignatureError
from bfl_private.ledger.identity import SigningIdentity, VerifyingKey, key_id_for

# golang.org/x/mod/sumdb/note documentation example (also C2SP signed-note interop tests).
PETER_SKEY_B64 = "AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"  # 0x01 || Ed25519 seed
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
# The Go checksum database's published verifier key (cmd/go/internal/modfetch/key.go).
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"

# RFC 8032 §7.1 TEST 1 (empty message).
RFC8032_SECRET = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
RFC8032_SIGNATURE = bytes.fromhex(
    "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b"
)


def peter() -> SigningIdentity:
    return SigningIdentity.from_private_bytes("PeterNeumann", base64.b64decode(PETER_SKEY_B64)[1:])


def test_rfc8032_vector() -> None:
    ident = SigningIdentity.from_private_bytes("rfc8032", RFC8032_SECRET)
    assert ident.public.public_bytes() == RFC8032_PUBLIC
    assert ident.sign(b"") == RFC8032_SIGNATURE
    ident.public.verify(RFC8032_SIGNATURE, b"")


def test_signed_note_key_id_and_vkey_match_go() -> None:
    key = peter().public
    assert key.vkey() == PETER_VKEY
    assert key.key_id_hex == "c74f20a3" and key.key_id == bytes.fromhex("c74f20a3")
    assert VerifyingKey.from_vkey(PETER_VKEY) == key
    sumdb = VerifyingKey.from_vkey(SUMDB_VKEY)
    assert sumdb.name == "sum.golang.org" and sumdb.key_id_hex == "033de0ae"
    assert sumdb.vkey() == SUMDB_VKEY
    assert key_id_for(sumdb.name, sumdb.public_bytes()) == sumdb.key_id


def test_key_id_binds_the_name() -> None:
    raw = peter().public.public_bytes()
    assert VerifyingKey.from_public_bytes("Other", raw).key_id != peter().public.key_id


def test_generate_sign_verify_and_private_round_trip() -> None:
    ident = SigningIdentity.generate("client-3")
    signature = ident.sign(b"round 4")
    ident.public.verify(signature, b"round 4")
    again = SigningIdentity.from_private_bytes("client-3", ident.private_bytes())
    assert again.public == ident.public
    assert ident.private_bytes().hex() not in repr(ident)


def test_verify_failures_name_the_key() -> None:
    ident = SigningIdentity.generate("validator-1")
    signature = ident.sign(b"block 9")
    with pytest.raises(SignatureError, match="validator-1.*" + ident.public.key_id_hex):
        ident.public.verify(signature, b"block 10")
    forged = bytes([signature[0] ^ 1]) + signature[1:]
    with pytest.raises(SignatureError, match="validator-1"):
        ident.public.verify(forged, b"block 9")
    with pytest.raises(SignatureError, match="64 bytes"):
        ident.public.verify(signature[:63], b"block 9")
    with pytest.raises(SignatureError):
        SigningIdentity.generate("validator-1").public.verify(signature, b"block 9")


def test_json_round_trip() -> None:
    key = SigningIdentity.generate("coordinator").public
    assert VerifyingKey.from_json(key.to_json()) == key
    assert set(key.to_json()) == {"name", "public_key"}


@pytest.mark.parametrize(
    "record",
    [
        None,
        {"name": "a"},
        {"name": "a", "public_key": "!!!"},
        {"name": "a", "public_key": base64.b64encode(b"\x00" * 31).decode()},
        {"name": "a", "public_key": 5},
        {"name": "a", "public_key": base64.b64encode(RFC8032_PUBLIC).decode(), "extra": 1},
        {"name": "a b", "public_key": base64.b64encode(RFC8032_PUBLIC).decode()},
    ],
)
def test_malformed_json_keys_are_refused(record) -> None:
    with pytest.raises(MalformedRecord):
        VerifyingKey.from_json(record)


@pytest.mark.parametrize("name", ["", "has space", "plus+sign", "tab\tname", "new\nline", "nbsp\u00a0x", 7])
def test_invalid_key_names_are_refused(name) -> None:
    with pytest.raises(MalformedRecord):
        SigningIdentity.generate(name)


@pytest.mark.parametrize(
    "vkey",
    [
        PETER_VKEY.replace("c74f20a3", "c74f20a4"),  # id does not match
        PETER_VKEY.replace("c74f20a3", "C74F20A3"),  # not lower-case
        PETER_VKEY.replace("+ARpc", "+AhpA"),  # type byte 0x02 and a different key
        "PeterNeumann+c74f20a3",
        "PeterNeumann+c74f20a3+!!!",
        "PeterNeumann+c74f+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "Peter Neumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
    ],
)
def test_malformed_vkeys_are_refused(vkey: str) -> None:
    with pytest.raises(MalformedRecord):
        VerifyingKey.from_vkey(vkey)


def test_wrong_length_keys_are_refused() -> None:
    with pytest.raises(MalformedRecord, match="32 raw bytes"):
        VerifyingKey.from_public_bytes("x", b"\x01" * 33)
    with pytest.raises(MalformedRecord, match="32 raw bytes"):
        SigningIdentity.from_private_bytes("x", b"\x01" * 31)
