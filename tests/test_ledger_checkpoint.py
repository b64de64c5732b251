"""C2SP checkpoints in signed notes: real third-party notes, quorum, tampering, malformed text."""
from __future__ import annotations

import base64

import pytest

from bfl_private.ledger import merkle
from bfl_private.ledger.checkpoint import (
    Checkpoint,
    cosign_note,
    open_note,
    sign_note,
    signature_line,
    verify_note,
)
from bfl_private.ledger.errors import MalformedRecord, QuorumError, SignatureError
from bfl_private.ledger.identity import SigningIdentity, VerifyingKey

SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
# Retrieved from https://sum.golang.org/latest on 2024-09-23 (quoted in transparency-dev's
# formats tests): a real checkpoint of a production transparency log.
SUMDB_NOTE = (
    "go.sum database tree\n30055305\nmXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n\n"
    "\u2014 sum.golang.org Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFcAAlWFJJYle3EJlDCrQ+y3A8=\n"
)
# A witness-cosigned sum.golang.org checkpoint (FiloSottile/litewitness README): the second
# line is by a key we do not know and must be ignored.
WITNESSED_NOTE = (
    "go.sum database tree\n15067302\ngJyioq6dwR9n+NjEWORfYmH+ubeYm3kH42BBQ0bTpYI=\n\n"
    "\u2014 sum.golang.org Az3grp1rvWOs5NKlr/xR4GLN/CDyzzakmt1o61uSxYKpK1SerqOP2ClbX/peKUZjYnyomH5Xz7GZG3TpB7OeKn4E2ww=\n"
    "\u2014 test.example.com qTGhC/xIPQ0AXKHK6Y+9ypRfuvMZWPjRXM8NiOg5M1WREn07VQXyuIXM3NRNav3ieVFLUqDRK77PWDmL6w8w84UqeAw=\n"
)
# golang.org/x/mod/sumdb/note documentation example.
PETER_SEED = base64.b64decode("AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz")[1:]
PETER_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
PETER_NOTE = PETER_TEXT.decode() + (
    "\n\u2014 PeterNeumann x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)


def test_real_sumdb_checkpoint_opens() -> None:
    cp = open_note(SUMDB_NOTE, verifiers=[VerifyingKey.from_vkey(SUMDB_VKEY)], quorum=1)
    assert cp.origin == "go.sum database tree"
    assert cp.size == 30055305
    assert cp.root == base64.b64decode("mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=")
    assert cp.extensions == ()


def test_real_sumdb_checkpoint_tampered_is_refused() -> None:
    key = VerifyingKey.from_vkey(SUMDB_VKEY)
    with pytest.raises(SignatureError, match="sum.golang.org"):
        open_note(SUMDB_NOTE.replace("30055305", "30055306"), verifiers=[key], quorum=1)


def test_unknown_cosigner_is_ignored_but_does_not_count() -> None:
    key = VerifyingKey.from_vkey(SUMDB_VKEY)
    assert open_note(WITNESSED_NOTE, verifiers=[key], quorum=1).size == 15067302
    with pytest.raises(QuorumError, match="1 known keys"):
        open_note(WITNESSED_NOTE, verifiers=[key], quorum=2)


def test_go_note_example_is_reproduced_exactly() -> None:
    peter = SigningIdentity.from_private_bytes("PeterNeumann", PETER_SEED)
    assert sign_note(PETER_TEXT, [peter]) == PETER_NOTE
    assert verify_note(PETER_NOTE, verifiers=[peter.public], quorum=1) == PETER_TEXT
    with pytest.raises(SignatureError):
        verify_note(PETER_NOTE.replace("cryptography", "cryptographY"), verifiers=[peter.public], quorum=1)
    with pytest.raises(MalformedRecord):  # the body is a note, not a checkpoint
        open_note(PETER_NOTE, verifiers=[peter.public], quorum=1)


# --- our own checkpoints with a validator quorum (f = 1, 3f + 1 = 4, quorum 2f + 1 = 3) ---


@pytest.fixture(scope="module")
def validators() -> list[SigningIdentity]:
    return [SigningIdentity.generate(f"validator-{i}") for i in range(4)]


@pytest.fixture(scope="module")
def checkpoint() -> Checkpoint:
    hashes = [merkle.leaf_hash(bytes([i])) for i in range(11)]
    return Checkpoint("bfl-private/test-federation", 11, merkle.root_from_leaf_hashes(hashes),
                      ("height 3", "state 5f0c"))


def keys(ids: list[SigningIdentity]) -> list[VerifyingKey]:
    return [i.public for i in ids]


def test_body_format_and_round_trip(checkpoint: Checkpoint) -> None:
    body = checkpoint.body()
    lines = body.decode().split("\n")
    assert lines[:3] == ["bfl-private/test-federation", "11", base64.b64encode(checkpoint.root).decode()]
    assert lines[3:] == ["height 3", "state 5f0c", ""]
    assert Checkpoint.from_body(body) == checkpoint
    empty = Checkpoint("o", 0, merkle.EMPTY_ROOT)
    assert Checkpoint.from_body(empty.body()) == empty


def test_quorum_of_validators(checkpoint: Checkpoint, validators: list[SigningIdentity]) -> None:
    note = sign_note(checkpoint.body(), validators[:3])
    assert open_note(note, verifiers=keys(validators), quorum=3) == checkpoint
    with pytest.raises(QuorumError, match="2 known keys"):
        open_note(sign_note(checkpoint.body(), validators[:2]), verifiers=keys(validators), quorum=3)


def test_cosigning_builds_the_certificate(checkpoint: Checkpoint, validators: list[SigningIdentity]) -> None:
    note = sign_note(checkpoint.body(), validators[:1])
    note = cosign_note(note, validators[1:2])
    note = cosign_note(note, validators[2:4])
    assert open_note(note, verifiers=keys(validators), quorum=4) == checkpoint
    with pytest.raises(ValueError, match="already signed"):
        cosign_note(note, validators[:1])


def test_dropped_signature_falls_below_quorum(checkpoint: Checkpoint, validators: list[SigningIdentity]) -> None:
    note = sign_note(checkpoint.body(), validators[:3])
    lines = note.splitlines(keepends=True)
    dropped = "".join(lines[:-1])
    with pytest.raises(QuorumError):
        open_note(dropped, verifiers=keys(validators), quorum=3)
    # Repeating one validator's line does not count twice.
    repeated = dropped + lines[-2]
    with pytest.raises(QuorumError):
        open_note(repeated, verifiers=keys(validators), quorum=3)


def test_tampered_body_and_forged_signature(checkpoint: Checkpoint, validators: list[SigningIdentity]) -> None:
    note = sign_note(checkpoint.body(), validators[:3])
    with pytest.raises(SignatureError, match="validator-0"):
        open_note(note.replace("\n11\n", "\n12\n"), verifiers=keys(validators), quorum=3)
    lines = note.splitlines(keepends=True)
    name, b64 = lines[-1][2:].split(" ")
    blob = bytearray(base64.b64decode(b64))
    blob[10] ^= 0x40
    forged = "".join(lines[:-1]) + f"\u2014 {name} {base64.b64encode(bytes(blob)).decode()}\n"
    with pytest.raises(SignatureError, match=name):
        open_note(forged, verifiers=keys(validators), quorum=3)


def test_impostor_with_a_validator_name_is_ignored(checkpoint: Checkpoint, validators: list[SigningIdentity]) -> None:
    impostor = SigningIdentity.generate("validator-3")  # same name, different key id
    note = sign_note(checkpoint.body(), validators[:2]) + signature_line(checkpoint.body(), impostor)
    with pytest.raises(QuorumError):
        open_note(note, verifiers=keys(validators), quorum=3)


def test_sign_note_refuses_duplicates_and_bad_bodies(validators: list[SigningIdentity]) -> None:
    with pytest.raises(ValueError, match="twice"):
        sign_note(b"o\n1\n" + b"A" * 44 + b"\n", [validators[0], validators[0]])
    with pytest.raises(ValueError, match="at least one"):
        sign_note(b"text\n", [])
    with pytest.raises(MalformedRecord, match="newline"):
        sign_note(b"no newline", validators[:1])
    with pytest.raises(MalformedRecord, match="control"):
        sign_note(b"bell\x07\n", validators[:1])


@pytest.mark.parametrize(
    "body, reason",
    [
        (b"origin\n11\n", "needs origin"),
        (b"origin\n11\nAAAA", "newline"),
        (b"origin\n011\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        (b"origin\n-1\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        (b"origin\n+5\n" + base64.b64encode(bytes(32)) + b"\n", "canonical decimal"),
        (b"origin\n1\n" + base64.b64encode(bytes(31)) + b"\n", "32 bytes"),
        (b"origin\n1\nnot base64!\n", "not base64"),
        (b"\n1\n" + base64.b64encode(bytes(32)) + b"\n", "origin"),
        (b"origin\n1\n" + base64.b64encode(bytes(32)) + b"\n\n", "extension"),
        (b"orig\xffin\n1\n" + base64.b64encode(bytes(32)) + b"\n", "UTF-8"),
    ],
)
def test_malformed_checkpoint_bodies(body: bytes, reason: str) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        Checkpoint.from_body(body)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": "a\nb", "size": 1, "root": bytes(32)},
        {"origin": "a", "size": -1, "root": bytes(32)},
        {"origin": "a", "size": True, "root": bytes(32)},
        {"origin": "a", "size": 1, "root": bytes(31)},
        {"origin": "a", "size": 1, "root": bytes(32), "extensions": ("",)},
    ],
)
def test_invalid_checkpoints_cannot_be_built(kwargs: dict) -> None:
    with pytest.raises(MalformedRecord):
        Checkpoint(**kwargs)


def _note_with(block: str) -> str:
    return "o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n\n" + block


@pytest.mark.parametrize(
    "note, reason",
    [
        ("o\n1\n" + base64.b64encode(bytes(32)).decode() + "\n", "no blank line"),
        (_note_with(""), "no signature lines"),
        (_note_with("- v AAAAAAAA\n"), "does not start"),
        (_note_with("\u2014 v !!!!\n"), "no valid base64"),
        (_note_with("\u2014 v AAAA\n"), "no valid base64"),  # key id only, no signature
        (_note_with("\u2014 v\n"), "no valid base64"),
        (_note_with("\u2014 v AAAAAAAA"), "final newline"),
        (_note_with("\u2014 v+x AAAAAAAA\n"), "whitespace or"),
        (_note_with("\u2014 v AAAAAAAA\n" * 101), "more than 100"),
        ("o\r\n1\n\n\u2014 v AAAAAAAA\n", "control"),
        (b"bytes", "must be text"),
    ],
)
def test_malformed_notes(note, reason: str, validators: list[SigningIdentity]) -> None:
    with pytest.raises(MalformedRecord, match=reason):
        verify_note(note, verifiers=keys(validators), quorum=1)


def test_quorum_must_be_positive(checkpoint: Checkpoint, validators: list[SigningIdentity]) -> None:
    note = sign_note(checkpoint.body(), validators[:1])
    with pytest.raises(ValueError):
        verify_note(note, verifiers=keys(validators), quorum=0)
