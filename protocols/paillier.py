"""Additively homomorphic aggregation with Paillier, packed and with verifiable decryption.

Roles and trust model
---------------------
* The **key holder** (:class:`PaillierKeyHolder`) owns the secret key (p, q). It is a
  party distinct from the aggregator; a federation keeps one across rounds.
* **Clients** get only the public key n. Each clips and fixed-point encodes its update
  with the masking protocol's :class:`~bfl_private.protocols.quantize.FixedPointCodec`,
  packs several levels per plaintext (:class:`PackingLayout`) and encrypts.
* The **aggregator** gets only the public key. It checks every submission on receipt,
  multiplies the ciphertexts (Paillier's homomorphic addition) and asks the key holder
  to decrypt the sum.
* The key holder never decrypts a ciphertext it is handed: :meth:`PaillierKeyHolder.
  decrypt_aggregate` takes the round's committed *submissions*, recomputes their
  homomorphic sum itself, refuses a sum of fewer than ``min_summands`` inputs, a
  duplicated input or a claimed aggregate that differs from its own, and only then
  decrypts.

What this does **not** protect against: a key holder who obtains an individual client's
ciphertext (from the ledger's blob store, where submissions are public) can decrypt it
on its own. Federations therefore use a committee of validators sharing a threshold key
instead (:mod:`.paillier_committee`, any :class:`PaillierDecryptor` fits here), so that
only a quorum can decrypt. Either decryptor trusts the participant set it is given
(committed on the ledger): it cannot tell a real client from an aggregator-made
encryption of zero.

Verifiable decryption
---------------------
For g = n + 1 the encryption map (m, r) -> (1 + m n) r^n mod n^2 is a bijection from
Z_n x Z_n^* onto Z_(n^2)^* (Paillier 1999, §3), so a ciphertext has exactly one opening.
The key holder publishes the plaintext m *and* the randomness r, which it recovers as
r = c^(n^-1 mod phi(n)) mod n (because c = r^n mod n); anyone re-encrypts with the public
key alone (:func:`verify_decryption`). Any other m or r fails.

Packing
-------
A sum of N levels, each at most 2^b - 1, is below 2^(b + h) with h = bit_length(N)
headroom bits. Slots of w = b + h bits are laid side by side in one plaintext:
s = floor((bits(n) - 1) / w) slots, so a packed sum stays below 2^(bits(n)-1) < n and
never wraps. 2048-bit keys with 16-bit values and N <= 15 give 102 slots per ciphertext.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import gmpy2
import numpy as np
import rfc8785
from phe.paillier import PaillierPrivateKey, PaillierPublicKey, generate_paillier_keypair
from safetensors.numpy import save as save_safetensors

from .base import (
    AggregationProtocol,
    AggregationResult,
    ForgedInput,
    Stage,
    check_forged,
    check_updates,
    decode_or_refuse,
    load_submission_tensors,
    one_shot_submitters,
    refused_by_key_holder,
    receive_submissions,
)
from .errors import (
    AggregateMismatch,
    ConfigurationError,
    DecryptionProofError,
    HeadroomExceeded,
    MalformedInput,
    ProtocolError,
    ReplayedMessage,
    RoundAbort,
    SlotOverflow,
    TooManyDropouts,
    WrongKey,
)
from .paillier_modulus import ModulusProof, prove_modulus, verify_modulus
from .paillier_plaintext_proof import (
    PlaintextProof,
    PlaintextProofError,
    encrypt_with_proof,
    submission_context,
    verify_plaintext_proof,
)
from .quantize import Codec, codec_from_json
from .records import exact_fields, integer, texts
from .threshold_paillier import ThresholdDecryptionRecord, round_context

KEY_BITS: tuple[int, ...] = (1024, 2048, 3072)
"""Modulus sizes this module handles. A federation's policy (genesis) allows only 2048
and 3072 (``ProtocolSettings``); 1024 is for fast protocol unit tests only, not secure."""
DEFAULT_KEY_BITS = 3072
"""128-bit security (NIST SP 800-57); 2048 gives about 112."""
_KEY_FORMAT = "bfl-private/paillier-private-key/v1"
_CIPHERTEXTS = "ciphertexts"
_PROOFS = "plaintext_proofs"
_KEY_ID = "key_id"
# Below this many ciphertexts forking workers costs more than it saves.
_MIN_PARALLEL = 16


# ---------------------------------------------------------------- public key helpers


def key_id(public_key: PaillierPublicKey) -> bytes:
    """SHA-256 fingerprint of the modulus: binds a submission to the key it was made under."""
    n = public_key.n
    return hashlib.sha256(b"bfl-private/paillier/n:" + n.to_bytes((n.bit_length() + 7) // 8, "big")).digest()


def public_key_to_json(public_key: PaillierPublicKey) -> dict[str, Any]:
    return {"n": format(public_key.n, "x"), "key_id": key_id(public_key).hex()}


def public_key_from_json(data: Any) -> PaillierPublicKey:
    """Parse ``{"n": hex}``, refusing a modulus of an unsupported size or a wrong fingerprint."""
    n = _parse_hex(data.get("n") if isinstance(data, Mapping) else None, "public key n")
    if n.bit_length() not in KEY_BITS or n % 2 == 0:
        raise MalformedInput(f"public key n has {n.bit_length()} bits; expected an odd modulus of {KEY_BITS} bits")
    key = PaillierPublicKey(n)
    if "key_id" in data and data["key_id"] != key_id(key).hex():
        raise WrongKey(f"public key fingerprint {data['key_id']!r} does not match its modulus")
    return key


@dataclass(frozen=True)
class PublishedKey:
    """A Paillier public key with the proof that its modulus is well formed
    (:mod:`.paillier_modulus`), as every Paillier round's opening announces it (fields
    ``public_key`` and ``modulus_proof`` of its protocol parameters). Hospitals, validators
    and the verifier check both; the federation's first Paillier round pins the key."""

    public_key: PaillierPublicKey
    proof: ModulusProof

    def to_json(self) -> dict[str, Any]:
        return {"public_key": public_key_to_json(self.public_key), "modulus_proof": self.proof.to_json()}

    @classmethod
    def from_json(cls, data: Any, *, key_bits: int) -> PublishedKey:
        """Parse and check: a modulus of exactly ``key_bits`` bits (the genesis policy, never
        a round's say) whose proof verifies. Raises a MalformedInput subclass."""
        if not isinstance(data, Mapping):
            raise MalformedInput("published Paillier key must be a JSON object")
        public_key = public_key_from_json(data.get("public_key"))
        if public_key.n.bit_length() != key_bits:
            raise WrongKey(f"published Paillier key has {public_key.n.bit_length()} bits; genesis policy is {key_bits}")
        proof = ModulusProof.from_json(data.get("modulus_proof"))
        verify_modulus(public_key.n, proof)
        return cls(public_key, proof)


def _parse_hex(value: Any, what: str) -> int:
    if not isinstance(value, str) or not value or value.strip("0123456789abcdef"):
        raise MalformedInput(f"{what}: expected a lower-case hex string, got {str(value)[:40]!r}")
    return int(value, 16)


def _ciphertext_width(public_key: PaillierPublicKey) -> int:
    """Bytes of one ciphertext in Z_(n^2), written fixed-width big-endian."""
    return (2 * public_key.n.bit_length() + 7) // 8


# ---------------------------------------------------------------- packing


@dataclass(frozen=True)
class PackingLayout:
    """How a vector of ``length`` levels of ``value_bits`` bits fills Paillier plaintexts.

    The slot count is derived, never chosen: ``slots = (key_bits - 1) // slot_bits`` with
    ``slot_bits = value_bits + bit_length(max_summands)``.
    """

    key_bits: int
    value_bits: int
    max_summands: int
    length: int

    def __post_init__(self) -> None:
        if self.key_bits not in KEY_BITS:
            raise ConfigurationError(f"key_bits must be one of {KEY_BITS}, got {self.key_bits}")
        if not 1 <= self.value_bits <= 32:
            raise ConfigurationError(f"value_bits must be in 1..32, got {self.value_bits}")
        if self.max_summands < 1:
            raise ConfigurationError(f"max_summands must be >= 1, got {self.max_summands}")
        if self.length < 1:
            raise ConfigurationError(f"length must be >= 1, got {self.length}")
        if self.slot_bits > 63:
            raise ConfigurationError(f"slot of {self.slot_bits} bits exceeds 63: lower value_bits or max_summands")

    @classmethod
    def for_codec(cls, *, key_bits: int, codec: Codec, length: int) -> PackingLayout:
        """The layout for ``codec``'s levels, with headroom for ``codec.max_summands`` clients."""
        return cls(key_bits=key_bits, value_bits=codec.bits, max_summands=codec.max_summands, length=length)

    @property
    def headroom_bits(self) -> int:
        return self.max_summands.bit_length()

    @property
    def slot_bits(self) -> int:
        return self.value_bits + self.headroom_bits

    @property
    def slots(self) -> int:
        """Values per plaintext: the packed sum stays below 2^(key_bits - 1) < n."""
        return (self.key_bits - 1) // self.slot_bits

    @property
    def ciphertexts(self) -> int:
        return -(-self.length // self.slots)

    @property
    def _packed_bytes(self) -> int:
        return (self.slots * self.slot_bits + 7) // 8

    def pack(self, levels: np.ndarray) -> list[int]:
        """Lay ``length`` levels (each < 2^value_bits) into plaintext integers, slot 0 lowest."""
        v = np.asarray(levels)
        if v.ndim != 1 or v.shape[0] != self.length or not np.issubdtype(v.dtype, np.integer):
            raise MalformedInput(f"expected {self.length} integer levels, got {v.dtype} {v.shape}")
        if v.size and (int(v.min()) < 0 or int(v.max()) >= 1 << self.value_bits):
            bad = int(np.flatnonzero((v < 0) | (v >= 1 << self.value_bits))[0])
            raise SlotOverflow(f"level {int(v[bad])} at index {bad} does not fit a {self.value_bits}-bit slot")
        padded = np.zeros(self.ciphertexts * self.slots, dtype=np.uint64)
        padded[: self.length] = v
        shifts = np.arange(self.slot_bits, dtype=np.uint64)
        bits = ((padded[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
        rows = bits.reshape(self.ciphertexts, self.slots * self.slot_bits)
        packed = np.packbits(rows, axis=1, bitorder="little")
        return [int.from_bytes(row.tobytes(), "little") for row in packed]

    def unpack(self, plaintexts: Sequence[int], *, summands: int) -> np.ndarray:
        """Split decrypted sums of ``summands`` packed vectors into uint32 slot sums.

        Raises :class:`SlotOverflow` where a plaintext has bits past its last slot or a
        slot exceeds ``summands * (2^value_bits - 1)``: such a sum is not one of valid
        encodings, and is refused rather than wrapped.
        """
        if not 1 <= summands <= self.max_summands:
            raise HeadroomExceeded(f"{summands} summands, but the layout has headroom for {self.max_summands}")
        if len(plaintexts) != self.ciphertexts:
            raise MalformedInput(f"expected {self.ciphertexts} plaintexts, got {len(plaintexts)}")
        width = self._packed_bytes
        rows = []
        for index, m in enumerate(plaintexts):
            if m < 0 or m.bit_length() > self.slots * self.slot_bits:
                raise SlotOverflow(f"plaintext {index} has {m.bit_length()} bits, past {self.slots} slots of {self.slot_bits}")
            rows.append(np.frombuffer(m.to_bytes(width, "little"), dtype=np.uint8))
        bits = np.unpackbits(np.stack(rows), axis=1, bitorder="little")[:, : self.slots * self.slot_bits]
        weights = np.uint64(1) << np.arange(self.slot_bits, dtype=np.uint64)
        sums = (bits.reshape(-1, self.slot_bits).astype(np.uint64) * weights).sum(axis=1)[: self.length]
        limit = summands * ((1 << self.value_bits) - 1)
        if sums.size and int(sums.max()) > limit:
            bad = int(np.flatnonzero(sums > limit)[0])
            raise SlotOverflow(f"slot {bad} sums to {int(sums[bad])}, past {summands} x {(1 << self.value_bits) - 1}")
        return sums.astype(np.uint32)

    def to_json(self) -> dict[str, int]:
        return {
            "key_bits": self.key_bits,
            "value_bits": self.value_bits,
            "max_summands": self.max_summands,
            "length": self.length,
            "headroom_bits": self.headroom_bits,
            "slot_bits": self.slot_bits,
            "slots": self.slots,
            "ciphertexts": self.ciphertexts,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PackingLayout:
        """Parse a layout, checking that its derived fields match the derivation."""
        try:
            layout = cls(
                key_bits=int(data["key_bits"]),
                value_bits=int(data["value_bits"]),
                max_summands=int(data["max_summands"]),
                length=int(data["length"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedInput(f"bad packing layout {dict(data) if isinstance(data, Mapping) else data!r}: {exc}") from exc
        if dict(data) != layout.to_json():
            raise MalformedInput(f"packing layout fields {dict(data)} disagree with their derivation {layout.to_json()}")
        return layout


# ---------------------------------------------------------------- encryption and addition


@dataclass(frozen=True)
class ProvenCiphertext:
    """A ciphertext with its sender's proof of knowing the plaintext, bound to a context."""

    ciphertext: int
    proof: PlaintextProof


def _widths(n: int) -> tuple[int, int]:
    """Bytes of an element of Z_n and of Z_(n^2), written fixed-width big-endian."""
    return (n.bit_length() + 7) // 8, (2 * n.bit_length() + 7) // 8


def _encrypt_serial(n: int, plaintexts: Sequence[int], *, context: bytes, first_index: int) -> list[ProvenCiphertext]:
    key = PaillierPublicKey(n)
    out = []
    for offset, m in enumerate(plaintexts):
        ciphertext, proof = encrypt_with_proof(key, int(m), context=context, index=first_index + offset)
        out.append(ProvenCiphertext(ciphertext, proof))
    return out


def _to_bytes(n: int, items: Sequence[ProvenCiphertext]) -> bytes:
    small, large = _widths(n)
    return b"".join(item.ciphertext.to_bytes(large, "big") + item.proof.commitment.to_bytes(large, "big")
                    + item.proof.z.to_bytes(small, "big") + item.proof.w.to_bytes(small, "big") for item in items)


def _from_bytes(n: int, data: bytes) -> list[ProvenCiphertext]:
    small, large = _widths(n)
    size = 2 * large + 2 * small
    out = []
    for start in range(0, len(data), size):
        row = data[start:start + size]
        values = [int.from_bytes(row[a:b], "big") for a, b in
                  ((0, large), (large, 2 * large), (2 * large, 2 * large + small), (2 * large + small, size))]
        out.append(ProvenCiphertext(values[0], PlaintextProof(*values[1:])))
    return out


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def encrypt(public_key: PaillierPublicKey, plaintexts: Sequence[int], *, context: bytes,
            workers: int | None = None) -> list[ProvenCiphertext]:
    """Encrypt plaintexts in [0, n) with fresh randomness, each with a proof of knowing its
    plaintext bound to ``context`` (:func:`~.paillier_plaintext_proof.submission_context`),
    spread over ``workers`` processes.

    Workers are forked children that return fixed-width big-endian values over a pipe (no
    pickling); each draws its randomness from the OS CSPRNG (``secrets``), which is
    fork-safe. ``workers`` defaults to the CPU count; 1 encrypts in-process.
    """
    n = public_key.n
    for index, m in enumerate(plaintexts):
        if not isinstance(m, int) or not 0 <= m < n:
            raise SlotOverflow(f"plaintext {index} is not an integer in [0, n)")
    if workers is None:
        workers = os.cpu_count() or 1
    if workers < 1:
        raise ConfigurationError(f"workers must be >= 1, got {workers}")
    if workers == 1 or len(plaintexts) < _MIN_PARALLEL or not hasattr(os, "fork"):
        return _encrypt_serial(n, plaintexts, context=context, first_index=0)
    small, large = _widths(n)
    row = 2 * large + 2 * small
    bounds = np.linspace(0, len(plaintexts), workers + 1).astype(int)
    children: list[tuple[int, int, int]] = []
    try:
        for lo, hi in itertools.pairwise(bounds[1:]):
            read_fd, write_fd = os.pipe()
            pid = os.fork()
            if pid == 0:  # child: encrypt its share, write it, leave without running atexit hooks
                status = 1
                try:
                    os.close(read_fd)
                    out = _to_bytes(n, _encrypt_serial(n, plaintexts[lo:hi], context=context, first_index=int(lo)))
                    view = memoryview(out)
                    while view:
                        view = view[os.write(write_fd, view):]
                    status = 0
                finally:
                    os._exit(status)
            os.close(write_fd)
            children.append((pid, read_fd, hi - lo))
        result = _encrypt_serial(n, plaintexts[: bounds[1]], context=context, first_index=0)
        for pid, read_fd, count in children:
            data = _read_all(read_fd)
            if len(data) != count * row:
                raise ChildProcessError(f"encryption worker {pid} returned {len(data)} bytes, expected {count * row}")
            result.extend(_from_bytes(n, data))
        return result
    finally:
        failed = []
        for pid, read_fd, _ in children:
            os.close(read_fd)
            if os.waitpid(pid, 0)[1] != 0:
                failed.append(pid)
        if failed:
            raise ChildProcessError(f"encryption workers {failed} failed")


def add(public_key: PaillierPublicKey, ciphertext_vectors: Iterable[Sequence[int]]) -> list[int]:
    """Homomorphic sum of several ciphertext vectors: the coordinate-wise product mod n^2."""
    n2 = gmpy2.mpz(public_key.nsquare)
    total: list[Any] | None = None
    for vector in ciphertext_vectors:
        if total is None:
            total = [gmpy2.mpz(c) for c in vector]
        elif len(vector) != len(total):
            raise MalformedInput(f"ciphertext vectors of lengths {len(total)} and {len(vector)} cannot be added")
        else:
            total = [gmpy2.f_mod(t * c, n2) for t, c in zip(total, vector)]
    if total is None:
        raise MalformedInput("no ciphertext vectors to add")
    return [int(t) for t in total]


# ---------------------------------------------------------------- submissions


def encode_submission(public_key: PaillierPublicKey, proven: Sequence[ProvenCiphertext]) -> bytes:
    """A safetensors blob: fixed-width big-endian ciphertexts, their plaintext-knowledge
    proofs (commitment, z, w per row) and the key fingerprint."""
    small, large = _widths(public_key.n)
    ciphertexts = b"".join(item.ciphertext.to_bytes(large, "big") for item in proven)
    proofs = b"".join(item.proof.commitment.to_bytes(large, "big") + item.proof.z.to_bytes(small, "big")
                      + item.proof.w.to_bytes(small, "big") for item in proven)
    return save_safetensors({
        _CIPHERTEXTS: np.frombuffer(ciphertexts, dtype=np.uint8).reshape(len(proven), large),
        _PROOFS: np.frombuffer(proofs, dtype=np.uint8).reshape(len(proven), large + 2 * small),
        _KEY_ID: np.frombuffer(key_id(public_key), dtype=np.uint8),
    })


def decode_submission(blob: bytes, *, public_key: PaillierPublicKey, layout: PackingLayout, client: str,
                      round_id: int) -> list[int]:
    """Parse and check one client's submission: right key, right count, every c in Z_(n^2)^*,
    and every proof of plaintext knowledge valid for this round and this client (a replayed
    or re-randomised ciphertext cannot carry one)."""
    tensors = load_submission_tensors(blob, client=client)
    expected = [_CIPHERTEXTS, _KEY_ID, _PROOFS]
    if set(tensors) != set(expected):
        raise MalformedInput(f"submission of {client!r} holds tensors {sorted(tensors)}, expected {expected}")
    fingerprint = tensors[_KEY_ID]
    if fingerprint.dtype != np.uint8 or fingerprint.tobytes() != key_id(public_key):
        raise WrongKey(f"submission of {client!r} was made under key {fingerprint.tobytes().hex()[:16]}..., "
                       f"not the round's key {key_id(public_key).hex()[:16]}...")
    small, large = _widths(public_key.n)
    table, proofs = tensors[_CIPHERTEXTS], tensors[_PROOFS]
    if table.dtype != np.uint8 or table.shape != (layout.ciphertexts, large) \
            or proofs.dtype != np.uint8 or proofs.shape != (layout.ciphertexts, large + 2 * small):
        raise MalformedInput(f"submission of {client!r} has tables of shapes {table.shape} and {proofs.shape}, "
                             f"expected uint8 ({layout.ciphertexts}, {large}) and ({layout.ciphertexts}, "
                             f"{large + 2 * small})")
    n = gmpy2.mpz(public_key.n)
    context = submission_context(round_id=round_id, client=client, key_fingerprint=key_id(public_key))
    ciphertexts = []
    for index, (row, proof_row) in enumerate(zip(table, proofs)):
        c = int.from_bytes(row.tobytes(), "big")
        if not 0 < c < public_key.nsquare or gmpy2.gcd(c, n) != 1:
            raise MalformedInput(f"submission of {client!r}: ciphertext {index} is not in Z_(n^2)^*")
        raw = proof_row.tobytes()
        proof = PlaintextProof(int.from_bytes(raw[:large], "big"), int.from_bytes(raw[large:large + small], "big"),
                               int.from_bytes(raw[large + small:], "big"))
        try:
            verify_plaintext_proof(public_key, c, proof, context=context, index=index)
        except PlaintextProofError as exc:
            raise PlaintextProofError(f"submission of {client!r} in round {round_id}: {exc}") from exc
        ciphertexts.append(c)
    return ciphertexts


# ---------------------------------------------------------------- verifiable decryption


def verify_decryption(public_key: PaillierPublicKey, ciphertext: int, plaintext: int, proof: int) -> None:
    """Check that (plaintext, proof = r) opens ``ciphertext``: c == (1 + m n) r^n mod n^2.

    Needs the public key only. Returns None; raises :class:`DecryptionProofError` otherwise.
    The opening of a ciphertext is unique, so any m or r but the honest ones fail.
    """
    n, n2 = public_key.n, public_key.nsquare
    for name, value in (("ciphertext", ciphertext), ("plaintext", plaintext), ("proof", proof)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise DecryptionProofError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 < ciphertext < n2 or gmpy2.gcd(ciphertext, n) != 1:
        raise DecryptionProofError("ciphertext is not in Z_(n^2)^*")
    if not 0 <= plaintext < n:
        raise DecryptionProofError("plaintext is not in [0, n)")
    if not 0 < proof < n or gmpy2.gcd(proof, n) != 1:
        raise DecryptionProofError("randomness r is not in Z_n^*")
    reencrypted = (1 + plaintext * n) * gmpy2.powmod(proof, n, n2) % n2
    if reencrypted != ciphertext:
        raise DecryptionProofError("(1 + m n) r^n mod n^2 differs from the ciphertext: m or r is not its opening")


@dataclass(frozen=True)
class AggregateDecryption:
    """What the key holder publishes for one round: the sum it recomputed and its openings."""

    aggregate: tuple[int, ...]
    plaintexts: tuple[int, ...]
    proofs: tuple[int, ...]
    summands: int

    def transcript_record(self) -> dict[str, Any]:
        """The :class:`PaillierTranscript` fields with which the auditor checks this decryption."""
        return {"proofs": self.proofs}


class PaillierDecryptor(Protocol):
    """Who decrypts a round's sum: the single :class:`PaillierKeyHolder`, or a quorum of
    validators holding key shares (``paillier_committee.ValidatorCommittee``)."""

    @property
    def public_key(self) -> PaillierPublicKey: ...

    def decrypt_aggregate(self, submissions: Mapping[str, bytes], *, layout: PackingLayout,
                          claimed: Sequence[int] | None = None, round_id: int | None = None) -> Any:
        """Recompute the sum of ``submissions`` (refusing what :func:`checked_sum` refuses),
        decrypt it, and return an object with ``aggregate``, ``plaintexts`` and
        ``transcript_record()``."""


def checked_sum(
    public_key: PaillierPublicKey,
    submissions: Mapping[str, bytes],
    *,
    layout: PackingLayout,
    min_summands: int,
    round_id: int,
    claimed: Sequence[int] | None = None,
) -> list[int]:
    """A decryptor's own recomputation of the homomorphic sum it is asked to decrypt.

    Refuses (before anything is decrypted): fewer than ``min_summands`` or more than the
    layout's headroom of submissions, a submission under another key or malformed, two
    identical ciphertext vectors (a replayed input), and a ``claimed`` aggregate that
    differs from the recomputed one.
    """
    if layout.key_bits != public_key.n.bit_length():
        raise WrongKey(f"layout is for {layout.key_bits}-bit keys; this key has {public_key.n.bit_length()}")
    if len(submissions) < min_summands:
        raise TooManyDropouts(
            f"decryptor decrypts sums of at least {min_summands} inputs, got {len(submissions)}",
            stage="decrypt", required=min_summands, available=len(submissions),
        )
    if len(submissions) > layout.max_summands:
        raise HeadroomExceeded(f"{len(submissions)} submissions exceed the packing headroom of {layout.max_summands}")
    vectors: dict[str, list[int]] = {}
    seen: dict[tuple[int, ...], str] = {}
    for client in sorted(submissions):
        vector = decode_submission(submissions[client], public_key=public_key, layout=layout, client=client,
                                   round_id=round_id)
        first = seen.setdefault(tuple(vector), client)
        if first != client:
            raise ReplayedMessage(f"submission of {client!r} repeats the ciphertexts of {first!r}")
        vectors[client] = vector
    aggregate = add(public_key, (vectors[c] for c in sorted(vectors)))
    if claimed is not None and list(claimed) != aggregate:
        raise AggregateMismatch("claimed aggregate differs from the homomorphic sum of the submissions")
    return aggregate


class PaillierKeyHolder:
    """Owns the Paillier secret key; decrypts only aggregates it recomputed itself.

    ``min_summands`` is the holder's policy: it refuses to decrypt a "sum" of fewer
    inputs, since a sum of one is an individual client's update.
    """

    def __init__(self, private_key: PaillierPrivateKey, *, min_summands: int = 2) -> None:
        if private_key.public_key.n.bit_length() not in KEY_BITS:
            raise ConfigurationError(f"key of {private_key.public_key.n.bit_length()} bits; expected one of {KEY_BITS}")
        if min_summands < 1:
            raise ConfigurationError(f"min_summands must be >= 1, got {min_summands}")
        self._private_key = private_key
        self.min_summands = min_summands
        p, q, n = private_key.p, private_key.q, private_key.public_key.n
        # r = c^(n^-1 mod phi(n)) mod n, computed by CRT over p and q.
        self._r_exp_p = int(gmpy2.invert(n, p - 1))
        self._r_exp_q = int(gmpy2.invert(n, q - 1))
        self._q_inv_p = int(gmpy2.invert(q, p))

    @classmethod
    def generate(cls, *, bits: int = DEFAULT_KEY_BITS, min_summands: int = 2) -> PaillierKeyHolder:
        if bits not in KEY_BITS:
            raise ConfigurationError(f"bits must be one of {KEY_BITS}, got {bits}")
        _, private_key = generate_paillier_keypair(n_length=bits)
        return cls(private_key, min_summands=min_summands)

    @property
    def public_key(self) -> PaillierPublicKey:
        return self._private_key.public_key

    def publish(self) -> PublishedKey:
        """The public key with the proof that its modulus is well formed."""
        return PublishedKey(self.public_key, prove_modulus(self._private_key.p, self._private_key.q))

    def to_private_bytes(self) -> bytes:
        """Canonical JSON (RFC 8785) of p and q: store it where only the key holder reads."""
        p, q = self._private_key.p, self._private_key.q
        return rfc8785.dumps({"format": _KEY_FORMAT, "p": format(p, "x"), "q": format(q, "x")})

    @classmethod
    def from_private_bytes(cls, data: bytes, *, min_summands: int = 2) -> PaillierKeyHolder:
        """Load :meth:`to_private_bytes` output, checking that p and q make a valid key."""
        try:
            record = json.loads(data)
        except (ValueError, TypeError) as exc:
            raise MalformedInput(f"Paillier private key is not JSON: {exc}") from exc
        if not isinstance(record, dict) or record.get("format") != _KEY_FORMAT:
            raise MalformedInput(f"Paillier private key lacks format {_KEY_FORMAT!r}")
        p, q = _parse_hex(record.get("p"), "private key p"), _parse_hex(record.get("q"), "private key q")
        if p == q or not gmpy2.is_prime(p) or not gmpy2.is_prime(q):
            raise MalformedInput("Paillier private key: p and q must be distinct primes")
        n = p * q
        if n.bit_length() not in KEY_BITS or gmpy2.gcd(n, (p - 1) * (q - 1)) != 1:
            raise MalformedInput(f"Paillier private key: n = p q of {n.bit_length()} bits is not a valid modulus")
        return cls(PaillierPrivateKey(PaillierPublicKey(n), p, q), min_summands=min_summands)

    def _randomness(self, ciphertext: int) -> int:
        """The r with c = (1 + m n) r^n mod n^2: since c = r^n mod n, r = c^(n^-1 mod phi) mod n."""
        p, q = self._private_key.p, self._private_key.q
        r_p = gmpy2.powmod(ciphertext % p, self._r_exp_p, p)
        r_q = gmpy2.powmod(ciphertext % q, self._r_exp_q, q)
        return int(r_q + q * ((r_p - r_q) * self._q_inv_p % p))

    def decrypt_aggregate(
        self,
        submissions: Mapping[str, bytes],
        *,
        layout: PackingLayout,
        claimed: Sequence[int] | None = None,
        round_id: int,
    ) -> AggregateDecryption:
        """Recompute the homomorphic sum of ``submissions`` of round ``round_id`` (see
        :func:`checked_sum` for what is refused) and decrypt it, with proofs."""
        aggregate = checked_sum(self.public_key, submissions, layout=layout, min_summands=self.min_summands,
                                round_id=round_id, claimed=claimed)
        plaintexts = tuple(int(self._private_key.raw_decrypt(c)) for c in aggregate)
        proofs = tuple(self._randomness(c) for c in aggregate)
        return AggregateDecryption(tuple(aggregate), plaintexts, proofs, len(submissions))


# ---------------------------------------------------------------- the protocol


def forged_submission(forgery: ForgedInput, *, public_key: PaillierPublicKey, round_id: int, client: str,
                      workers: int | None = None) -> bytes:
    """The blob of a client that skips our encoder: its bytes, or any plaintexts in [0, n)
    encrypted under the round's key (no packing, no range; it knows them, so it proves so)."""
    if forgery.message is not None:
        return forgery.message
    plaintexts = [int(m) for m in forgery.values]  # type: ignore[union-attr]
    context = submission_context(round_id=round_id, client=client, key_fingerprint=key_id(public_key))
    return encode_submission(public_key, encrypt(public_key, plaintexts, context=context, workers=workers))


def encrypt_update(
    vector: np.ndarray,
    *,
    public_key: PaillierPublicKey,
    codec: Codec,
    layout: PackingLayout,
    round_id: int,
    client: str,
    rng: np.random.Generator | None = None,
    workers: int | None = None,
) -> bytes:
    """A client's step: clip, encode, pack, encrypt with proofs bound to this round and this
    client; returns the submission blob."""
    plaintexts = layout.pack(codec.encode(vector, rng))
    context = submission_context(round_id=round_id, client=client, key_fingerprint=key_id(public_key))
    return encode_submission(public_key, encrypt(public_key, plaintexts, context=context, workers=workers))


class PaillierProtocol(AggregationProtocol):
    """Packed Paillier aggregation: the aggregator holds only the public key.

    ``key_holder`` is a handle to whoever decrypts (a :class:`PaillierDecryptor`: the
    single key holder, or a committee of validators holding key shares); this object
    never reads a secret key or share.
    """

    name: ClassVar[str] = "paillier"

    def __init__(
        self,
        *,
        public_key: PaillierPublicKey,
        key_holder: PaillierDecryptor,
        codec: Codec,
        workers: int | None = None,
    ) -> None:
        if public_key.n.bit_length() not in KEY_BITS:
            raise ConfigurationError(f"public key of {public_key.n.bit_length()} bits; expected one of {KEY_BITS}")
        if key_holder.public_key.n != public_key.n:
            raise WrongKey("the key holder's key is not the public key this protocol encrypts under")
        self.public_key = public_key
        self.key_holder = key_holder
        self.codec = codec
        self.workers = workers

    def layout(self, length: int) -> PackingLayout:
        return PackingLayout.for_codec(key_bits=self.public_key.n.bit_length(), codec=self.codec, length=length)

    def aggregate(
        self,
        updates: Mapping[str, np.ndarray],
        *,
        round_id: int,
        round_seed: bytes,
        drop: Mapping[str, Stage] | None = None,
        rng: np.random.Generator | None = None,
        forged: Mapping[str, ForgedInput] | None = None,
    ) -> AggregationResult:
        """Encrypt each client's update, check and add the ciphertexts, have the key holder decrypt.

        A client dropped at "unmask" has already submitted and is counted (HE needs no
        recovery step); one dropped earlier never submits. ``round_seed`` is unused: the
        encryption randomness comes from the OS CSPRNG.
        """
        length = check_updates(updates)
        forged = check_forged(forged, updates)
        layout = self.layout(length)
        submitters, dropped = one_shot_submitters(updates, drop)
        if len(submitters) > layout.max_summands:
            raise HeadroomExceeded(f"{len(submitters)} clients exceed the codec's max_summands {layout.max_summands}")
        blobs = {
            client: forged_submission(forged[client], public_key=self.public_key, round_id=round_id, client=client,
                                      workers=self.workers) if client in forged
            else encrypt_update(updates[client], public_key=self.public_key, codec=self.codec, layout=layout,
                                round_id=round_id, client=client, rng=rng, workers=self.workers)
            for client in submitters
        }
        return self.aggregate_submissions(blobs, round_id=round_id, length=length,
                                          dropped={c: (drop or {})[c] for c in dropped})

    def aggregate_submissions(
        self, blobs: Mapping[str, bytes], *, round_id: int, length: int, dropped: Mapping[str, Stage]
    ) -> AggregationResult:
        """The aggregator's and key holder's half of :meth:`aggregate`, for submissions
        encrypted wherever the clients are (in this process, or on Flower nodes).

        Every blob is checked on receipt (one that does not decode is rejected with the
        reason), the valid ones are added, and the key holder decrypts only the sum it
        recomputes itself. ``dropped`` names the clients that never submitted.
        """
        layout = self.layout(length)
        if len(blobs) > layout.max_summands:
            raise HeadroomExceeded(f"{len(blobs)} submissions exceed the codec's max_summands {layout.max_summands}")
        width = _ciphertext_width(self.public_key)
        received, rejected = receive_submissions(
            blobs, lambda client, blob: decode_submission(blob, public_key=self.public_key, layout=layout, client=client,
                                                          round_id=round_id),
            round_id=round_id, drop=dropped,
            fingerprint=lambda ciphertexts: b"".join(c.to_bytes(width, "big") for c in ciphertexts),
        )
        included = sorted(received)
        claimed = add(self.public_key, (received[c] for c in included))
        submissions = {c: blobs[c] for c in included}
        try:
            decryption = self.key_holder.decrypt_aggregate(submissions, layout=layout, claimed=claimed,
                                                           round_id=round_id)
        except RoundAbort as exc:
            exc.received = dict(blobs)  # sent, so spent, though never decrypted
            raise
        except ProtocolError as exc:  # the decryptor refused what the aggregator let through
            raise refused_by_key_holder(exc, round_id=round_id, received=blobs) from exc
        total = decode_or_refuse(
            lambda: self.codec.decode_sum(layout.unpack(list(decryption.plaintexts), summands=len(included)),
                                          len(included)),
            round_id=round_id, received=blobs)
        transcript = PaillierTranscript(
            round=round_id, codec=self.codec.to_json(), public_key=self.public_key, layout=layout,
            included=tuple(included), aggregate=tuple(decryption.aggregate), plaintexts=tuple(decryption.plaintexts),
            **decryption.transcript_record(),
        ).to_json()
        return AggregationResult(
            protocol=self.name,
            total=total,
            included=tuple(included),
            dropped=tuple(sorted(dropped)),
            rejected=rejected,
            submissions=submissions,
            rejected_submissions={c: blobs[c] for c in rejected},
            transcript=transcript,
        )


@dataclass(frozen=True)
class PaillierTranscript:
    """A Paillier round's public record: the key, codec and packing the clients encrypted
    under, who was summed, the aggregate ciphertexts and their plaintexts, and the proof of
    the decryption: the key holder's openings (``proofs``, one r per ciphertext) or a
    validator quorum's partial decryptions (``threshold_decryption``), exactly one of them."""

    round: int
    codec: Mapping[str, Any]
    """The codec's parameters (:func:`~.quantize.codec_from_json` reads them)."""
    public_key: PaillierPublicKey
    layout: PackingLayout
    included: tuple[str, ...]
    aggregate: tuple[int, ...]
    plaintexts: tuple[int, ...]
    proofs: tuple[int, ...] | None = None
    threshold_decryption: ThresholdDecryptionRecord | None = None

    @property
    def summed(self) -> tuple[str, ...]:
        return self.included

    def to_json(self) -> dict[str, Any]:
        proof: dict[str, Any] = (
            {"proofs": [format(r, "x") for r in self.proofs]} if self.proofs is not None
            else {"threshold_decryption": self.threshold_decryption.to_json()} if self.threshold_decryption is not None
            else {})
        return {
            "protocol": PaillierProtocol.name,
            "round": self.round,
            "codec": dict(self.codec),
            "public_key": public_key_to_json(self.public_key),
            "layout": self.layout.to_json(),
            "included": list(self.included),
            "aggregate": [format(c, "x") for c in self.aggregate],
            "plaintexts": [format(m, "x") for m in self.plaintexts],
            **proof,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> PaillierTranscript:
        fields = exact_fields(data, _TRANSCRIPT_FIELDS, optional={"proofs", "threshold_decryption"},
                              what="paillier transcript", where=where)
        if fields["protocol"] != PaillierProtocol.name:
            raise MalformedInput(f"{where}: not a paillier transcript (protocol {fields['protocol']!r:.40})")
        if ("proofs" in fields) == ("threshold_decryption" in fields):
            raise MalformedInput(f"{where}: a paillier transcript proves its decryption with exactly one of "
                                 "'proofs' and 'threshold_decryption'")
        if not isinstance(fields["codec"], Mapping) or not isinstance(fields["layout"], Mapping):
            raise MalformedInput(f"{where}: the 'codec' and 'layout' records must be objects")
        for name, value in fields["layout"].items():  # PackingLayout reads numbers; a bool would pass as 1
            integer(value, what=f"layout {name}", where=where)
        layout = PackingLayout.from_json(fields["layout"])
        # The key is written back with its fingerprint, which public_key_from_json lets a key omit.
        exact_fields(fields["public_key"], {"n", "key_id"}, what="public key", where=where)

        def ciphertext_list(key: str) -> tuple[int, ...]:
            values = fields[key]
            if not isinstance(values, list) or len(values) != layout.ciphertexts:
                raise MalformedInput(f"{where}: field {key!r} must be a list of {layout.ciphertexts} hex strings")
            return tuple(_parse_hex(v, f"{where}, {key}[{i}]") for i, v in enumerate(values))

        threshold = fields.get("threshold_decryption")
        return cls(
            round=integer(fields["round"], what="round", where=where),
            codec=dict(fields["codec"]),
            public_key=public_key_from_json(fields["public_key"]),
            layout=layout,
            included=texts(fields["included"], what="included", where=where),
            aggregate=ciphertext_list("aggregate"),
            plaintexts=ciphertext_list("plaintexts"),
            proofs=ciphertext_list("proofs") if "proofs" in fields else None,
            threshold_decryption=None if threshold is None else ThresholdDecryptionRecord.from_json(threshold),
        )


TRANSCRIPT = PaillierTranscript
_TRANSCRIPT_FIELDS = {"protocol", "round", "codec", "public_key", "layout", "included", "aggregate", "plaintexts"}


def decoding_tolerance(transcript: Mapping[str, Any]) -> float:
    """Stochastic rounding moves each client's value by less than one step: included x step."""
    record = PaillierTranscript.from_json(transcript, where="paillier transcript")
    return len(record.included) * codec_from_json(dict(record.codec)).step


def recompute_from_submissions(transcript: Mapping[str, Any], submissions: Mapping[str, bytes]) -> np.ndarray:
    """The auditor's check: re-add the committed ciphertexts, verify each decryption, decode.

    Raises :class:`AggregateMismatch` if the recorded aggregate is not the sum of the
    submissions, :class:`DecryptionProofError` if a published (m, r) does not open it.
    """
    record = PaillierTranscript.from_json(transcript, where="paillier transcript")
    public_key, layout, included = record.public_key, record.layout, record.included
    codec = codec_from_json(dict(record.codec))
    if layout.key_bits != public_key.n.bit_length() or layout.value_bits != codec.bits \
            or layout.max_summands != codec.max_summands:
        raise MalformedInput("paillier transcript: layout does not match the public key and codec")
    if not included or len(set(included)) != len(included):
        raise MalformedInput("paillier transcript lacks a non-empty list of distinct 'included' clients")
    if len(included) > layout.max_summands:
        raise HeadroomExceeded(f"{len(included)} included clients exceed the headroom of {layout.max_summands}")
    missing = sorted(set(included) - set(submissions))
    if missing:
        raise MalformedInput(f"paillier transcript names clients without a submission: {missing}")
    recorded, plaintexts = list(record.aggregate), list(record.plaintexts)
    vectors = (decode_submission(submissions[c], public_key=public_key, layout=layout, client=c,
                                 round_id=record.round)
               for c in sorted(included))
    if add(public_key, vectors) != recorded:
        raise AggregateMismatch("recorded aggregate ciphertexts differ from the homomorphic sum of the submissions")
    if record.threshold_decryption is not None:  # decrypted by a quorum of validators: re-check and re-combine
        threshold = record.threshold_decryption
        if threshold.public_key.n != public_key.n:
            raise WrongKey("paillier transcript: the threshold key's modulus is not the round's public key")
        combined = threshold.verify_and_combine(recorded, context=round_context(record.round))
        if combined != plaintexts:
            bad = next(i for i, (a, b) in enumerate(zip(combined, plaintexts)) if a != b)
            raise DecryptionProofError(f"aggregate ciphertext {bad}: the recorded plaintext is not what the "
                                       f"validators' partial decryptions combine to")
    else:
        assert record.proofs is not None  # from_json admits exactly one of the two
        for index, (c, m, r) in enumerate(zip(recorded, plaintexts, record.proofs)):
            try:
                verify_decryption(public_key, c, m, r)
            except DecryptionProofError as exc:
                raise DecryptionProofError(f"aggregate ciphertext {index}: {exc}") from exc
    return codec.decode_sum(layout.unpack(plaintexts, summands=len(included)), len(included))
