"""Checkpoints of the log as C2SP tlog-checkpoint bodies inside C2SP signed notes.

A checkpoint (https://c2sp.org/tlog-checkpoint) commits to a log state in three or more
lines, each ending in a newline::

    <origin>
    <tree size, decimal>
    <root hash, standard base64>
    [extension lines]

It is carried in a signed note (https://c2sp.org/signed-note): the body, one empty line,
then signature lines ``— <key name> <base64(4-byte key id || signature)>`` (U+2014 EM DASH).

**Validator cosignatures** are plain Ed25519 signed-note signatures (type 0x01, key id as in
:mod:`bfl_private.ledger.identity`) over the same body, one line per validator, not the
timestamped C2SP tlog-cosignature (type 0x04) format: a block's quorum certificate is
"at least q distinct validator keys signed this exact checkpoint", which is what
``golang.org/x/mod/sumdb/note.Open`` with the validators' verifier keys checks too.

Parsing follows the Go reference implementation of signed notes: the note must be UTF-8
without control characters other than newline; the signatures start after the last blank
line; signatures by unknown keys are ignored (the spec requires it); a known key whose
signature does not verify is an error, never skipped; repeated signatures by one key count
once; at most 100 signature lines.
"""
from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import MalformedRecord, QuorumError, SignatureError
from .identity import KEY_ID_SIZE, SigningIdentity, VerifyingKey, check_key_name
from .merkle import HASH_SIZE

SIGNATURE_PREFIX = "\u2014 "
MAX_SIGNATURES = 100
_DECIMAL = re.compile(r"0|[1-9][0-9]*")


def _check_text(text: str, what: str) -> None:
    """Refuse control characters other than newline (C2SP signed-note text rules)."""
    for position, ch in enumerate(text):
        if ord(ch) < 0x20 and ch != "\n":
            raise MalformedRecord(f"{what}: control character {ch!r} at offset {position}")


def _check_line(line: str, what: str) -> None:
    if not line or "\n" in line:
        raise MalformedRecord(f"{what} must be one non-empty line, got {line!r}")
    _check_text(line, what)


@dataclass(frozen=True)
class Checkpoint:
    """One log state: origin (the log's name), tree size, RFC 9162 root hash, extensions."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line(self.origin, "checkpoint origin")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 0:
            raise MalformedRecord(f"checkpoint tree size must be a non-negative int: {self.size!r}")
        if not isinstance(self.root, bytes) or len(self.root) != HASH_SIZE:
            raise MalformedRecord(f"checkpoint root must be {HASH_SIZE} bytes")
        object.__setattr__(self, "extensions", tuple(self.extensions))
        for index, line in enumerate(self.extensions):
            _check_line(line, f"checkpoint extension line {index}")

    def body(self) -> bytes:
        """The checkpoint text that signers sign (UTF-8, every line newline-terminated)."""
        lines = [self.origin, str(self.size), base64.b64encode(self.root).decode("ascii")]
        return ("\n".join([*lines, *self.extensions]) + "\n").encode("utf-8")

    @classmethod
    def from_body(cls, data: bytes) -> Checkpoint:
        """Parse a checkpoint body; MalformedRecord unless it is what :meth:`body` writes."""
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedRecord(f"checkpoint is not UTF-8: {exc}") from None
        if not text.endswith("\n"):
            raise MalformedRecord("checkpoint body must end with a newline")
        lines = text[:-1].split("\n")
        if len(lines) < 3:
            raise MalformedRecord(f"checkpoint needs origin, size and root lines, got {len(lines)}")
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL.fullmatch(size_text):
            raise MalformedRecord(f"checkpoint tree size {size_text!r} is not a canonical decimal")
        try:
            root = base64.b64decode(root_text.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError) as exc:
            raise MalformedRecord(f"checkpoint root {root_text!r} is not base64: {exc}") from None
        checkpoint = cls(origin, int(size_text), root, tuple(extensions))
        if checkpoint.body() != bytes(data):
            raise MalformedRecord("checkpoint body is not in canonical form (base64 padding?)")
        return checkpoint


def signature_line(body: bytes, signer: SigningIdentity) -> str:
    """One note signature line ``— name base64(key id || Ed25519(body))`` with its newline."""
    blob = signer.public.key_id + signer.sign(body)
    return f"{SIGNATURE_PREFIX}{signer.name} {base64.b64encode(blob).decode('ascii')}\n"


def _check_body(body: bytes) -> str:
    try:
        text = bytes(body).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedRecord(f"note text is not UTF-8: {exc}") from None
    if not text.endswith("\n"):
        raise MalformedRecord("note text must end with a newline")
    _check_text(text, "note text")
    return text


def sign_note(body: bytes, signers: Sequence[SigningIdentity]) -> str:
    """A signed note: ``body``, an empty line, one signature line per signer (in order)."""
    text = _check_body(body)
    if not signers:
        raise ValueError("a signed note needs at least one signer")
    ids = [(s.name, s.public.key_id) for s in signers]
    if len(set(ids)) != len(ids):
        raise ValueError("the same key appears twice among the note's signers")
    return text + "\n" + "".join(signature_line(body, s) for s in signers)


@dataclass(frozen=True)
class _SignatureLine:
    name: str
    key_id: bytes
    signature: bytes
    line: str


def _split_note(note: str) -> tuple[bytes, list[_SignatureLine]]:
    """Split a note into its text and parsed signature lines (nothing verified yet)."""
    if not isinstance(note, str):
        raise MalformedRecord(f"signed note must be text, got {type(note).__name__}")
    _check_text(note, "signed note")
    split = note.rfind("\n\n")
    if split < 0:
        raise MalformedRecord("signed note has no blank line before its signatures")
    text, block = note[: split + 1], note[split + 2:]
    if not block or not block.endswith("\n"):
        raise MalformedRecord("signed note has no signature lines, or they lack a final newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedRecord(
            f"signed note has {len(lines)} signatures, more than {MAX_SIGNATURES}"
        )
    parsed = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith(SIGNATURE_PREFIX):
            raise MalformedRecord(f"signature line {number} does not start with '— ': {line!r}")
        name, sep, b64 = line[len(SIGNATURE_PREFIX):].partition(" ")
        check_key_name(name)
        try:
            blob = base64.b64decode(b64.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            blob = b""
        if not sep or len(blob) <= KEY_ID_SIZE:
            raise MalformedRecord(f"signature line {number} ({name}) has no valid base64 signature")
        parsed.append(_SignatureLine(name, blob[:KEY_ID_SIZE], blob[KEY_ID_SIZE:], line))
    return text.encode("utf-8"), parsed


def cosign_note(note: str, signers: Sequence[SigningIdentity]) -> str:
    """Append signature lines by ``signers`` to an existing note (a validator's cosignature).

    Existing lines are kept as they are and not verified here; a signer already present
    is refused, so a note never carries two lines by one key.
    """
    body, existing = _split_note(note)
    present = {(s.name, s.key_id) for s in existing}
    for signer in signers:
        if (signer.name, signer.public.key_id) in present:
            raise ValueError(f"{signer.name} has already signed this note")
        present.add((signer.name, signer.public.key_id))
    return note + "".join(signature_line(body, s) for s in signers)


def verify_note(note: str, *, verifiers: Sequence[VerifyingKey], quorum: int) -> bytes:
    """Verify a signed note against known keys and return its text (the signed body).

    Signatures by keys not in ``verifiers`` are ignored. Raises :class:`MalformedRecord` for
    a malformed note, :class:`SignatureError` when a known key's signature is invalid, and
    :class:`QuorumError` when fewer than ``quorum`` distinct known keys signed.
    """
    if isinstance(quorum, bool) or not isinstance(quorum, int) or quorum < 1:
        raise ValueError(f"quorum must be a positive integer, got {quorum!r}")
    known = {(v.name, v.key_id): v for v in verifiers}
    body, lines = _split_note(note)
    signed: set[tuple[str, bytes]] = set()
    for line in lines:
        key = known.get((line.name, line.key_id))
        if key is None or (line.name, line.key_id) in signed:
            continue
        try:
            key.verify(line.signature, body)
        except SignatureError as exc:
            raise SignatureError(f"signed note: {exc}") from None
        signed.add((line.name, line.key_id))
    if len(signed) < quorum:
        names = sorted(name for name, _ in signed)
        raise QuorumError(
            f"signed note has valid signatures from {len(signed)} known keys {names}, "
            f"quorum is {quorum} of {len(known)}"
        )
    return body


def open_note(note: str, *, verifiers: Sequence[VerifyingKey], quorum: int) -> Checkpoint:
    """Verify a signed checkpoint note (see :func:`verify_note`) and parse its body."""
    return Checkpoint.from_body(verify_note(note, verifiers=verifiers, quorum=quorum))
