"""CIDv1 names (raw, sha2-256, base32): a published value, the spec's bytes, refusals."""
from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bfl_private.ledger.cid import check_cid, cid_for, parse_cid
from bfl_private.ledger.errors import CIDMismatch, MalformedRecord

# multiformats/rust-cid README example: Cid::new_v1(RAW, Sha2_256.digest(b"beep boop")).
BEEP_BOOP = "bafkreieq5jui4j25lacwomsqgjeswwl3y5zcdrresptwgmfylxo2depppq"
# `ipfs add --cid-version=1 --raw-leaves` of an empty file.
EMPTY = "bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"


def test_published_values() -> None:
    assert cid_for(b"beep boop") == BEEP_BOOP
    assert cid_for(b"") == EMPTY
    assert parse_cid(EMPTY) == hashlib.sha256(b"").digest()


def _from_spec(data: bytes) -> str:
    """The CID assembled by hand from the multiformats tables, bit by bit."""
    raw = bytes([0x01, 0x55, 0x12, 0x20]) + hashlib.sha256(data).digest()
    bits = "".join(f"{byte:08b}" for byte in raw)
    bits += "0" * (-len(bits) % 5)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"  # RFC 4648 §6, lower case
    return "b" + "".join(alphabet[int(bits[i : i + 5], 2)] for i in range(0, len(bits), 5))


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_matches_the_spec_and_round_trips(data: bytes) -> None:
    cid = cid_for(data)
    assert cid == _from_spec(data)
    assert parse_cid(cid) == hashlib.sha256(data).digest()
    check_cid(cid, data)


@settings(max_examples=50, deadline=None)
@given(st.binary(min_size=1, max_size=100), st.integers(0, 7))
def test_changed_bytes_do_not_match(data: bytes, bit: int) -> None:
    changed = bytes([data[0] ^ (1 << bit)]) + data[1:]
    with pytest.raises(CIDMismatch, match=cid_for(data)):
        check_cid(cid_for(data), changed)


def _with_last_char(cid: str, char: str) -> str:
    return cid[:-1] + char


@pytest.mark.parametrize(
    "cid",
    [
        EMPTY.upper(),
        "B" + EMPTY[1:],
        "z" + EMPTY[1:],
        EMPTY[:-1],
        EMPTY + "a",
        EMPTY[:10] + "1" + EMPTY[11:],  # '1' is not in the base32 alphabet
        "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH",  # CIDv0 (dag-pb, base58)
        "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",  # CIDv1 dag-pb
        _with_last_char(EMPTY, "v"),  # 'u' + 1: a non-zero padding bit
        "",
        None,
    ],
)
def test_malformed_cids_are_refused(cid) -> None:
    with pytest.raises(MalformedRecord):
        parse_cid(cid)
    with pytest.raises(MalformedRecord):
        check_cid(cid, b"")


def test_sha256_with_another_codec_is_refused() -> None:
    raw = bytes([0x01, 0x71, 0x12, 0x20]) + hashlib.sha256(b"").digest()  # dag-cbor
    other = "b" + base64.b32encode(raw).decode().rstrip("=").lower()
    with pytest.raises(MalformedRecord, match="not CIDv1 raw sha2-256"):
        parse_cid(other)
