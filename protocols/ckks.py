"""Aggregation with CKKS (TenSEAL): approximate sums of float vectors under encryption.

Roles and trust model
---------------------
* The **key holder** (:class:`CkksKeyHolder`) owns the TenSEAL context with its secret
  key. It hands out only the *public* context (no secret key, no relinearisation or
  Galois keys: aggregation needs none).
* **Clients** clip their update to ``[-clip, clip]``, cut it into slot-sized chunks and
  encrypt each chunk under the public context.
* The **aggregator** loads the submissions under the public context, refuses what is
  malformed, under another context, transparent (not encrypted) or at another scale,
  and adds the ciphertexts.
* The key holder decrypts only a sum it has recomputed itself from the committed
  submissions (at least ``min_summands`` of them, no duplicates), never a ciphertext it
  is handed.

As with Paillier, a key holder that obtains one client's ciphertext (submissions are
public blobs) can decrypt it; masking needs no such trusted party.

**CKKS decryption is not provable.** Decryption is approximate and reveals no witness a
third party could check, so an auditor can recompute the *sum ciphertext* from the
submissions (ciphertext addition is exact and its serialisation deterministic), but must
take the key holder's word for the decrypted total. The result says so with
``decryption_provable=False``.

Published precision (against Li and Micciancio's attack)
-------------------------------------------------------
Publishing an approximate CKKS decryption next to its (recomputable) ciphertext is the
setting of Li and Micciancio's passive key-recovery attack (EUROCRYPT 2021, IND-CPA^D):
the low-order digits of a decryption are the decryption error, a linear function of the
secret key. The key holder therefore never publishes them: it rounds every decrypted
value to the grid of :meth:`CkksParameters.published_step`, the smallest power of two at
least 2^PUBLISHED_MARGIN_BITS = 1024 times the error bound of a sum of that many
summands (at N = 8192: 2^-10 for 2..3 summands, 2^-9 for 4..7, 2^-8 = 0.0039 for 8..14). The published
value differs from the exact float sum by at most step / 2 + error bound; the auditor
checks that every published value is a multiple of the step. What still leaks: a slot
whose exact sum lies within the error bound of a rounding midpoint rounds according to
the sign of its error; that happens for at most 2 * bound / step <= 2^-9 of the slots
and yields one bit each, not the error itself. This is rounding, not proven noise
flooding (which at 2^-40 statistical distance would cost about 2^20 times the error
bound, far coarser than an update), and no multiparty CKKS runs here (the ``openfhe``
wheel ships only a CPython 3.10 binary): CKKS keeps a single key holder, which can
decrypt any one submission. Prefer masking or Paillier where that matters.

Parameters (aggregation only, no multiplications): poly modulus degree N = 8192 with a
two-prime chain (60, 40) bits and scale 2^40. The total of 100 bits is below 218, the
largest log q for N = 8192 at 128-bit classical security with a ternary secret in the
Homomorphic Encryption Standard (Albrecht et al., 2018, Table 1). The 40-bit prime is
SEAL's special (key-switching) prime, so ciphertexts live modulo the 60-bit prime:
decoded sums must satisfy |sum| * 2^40 < 2^59, i.e. |sum| < 2^19 (checked as
``max_summands * clip`` at configuration, with a factor-2 margin).

Error bound (documented and tested)
-----------------------------------
Decrypting a sum of K fresh ciphertexts gives, per slot, the float sum of the clipped
inputs plus an error bounded by :meth:`CkksParameters.error_bound`:

    K * 10 * sigma_slot + K * clip * 2^-44,
    sigma_slot = sqrt(N * (sigma^2 (1 + 4N/3) + (2 + 2N/3) / 12)) / Delta,
    sigma = 3.2, Delta = 2^scale_bits

sigma^2 (1 + 4N/3) is the coefficient variance of the public-key encryption noise
e_1 + e_2 s - e u (s, u ternary with variance 2/3, e Gaussian with sigma = 3.2) and
(2 + 2N/3) / 12 that of the rounding of the encoding and of SEAL's final modulus switch
(uniform on [-1/2, 1/2], once plain and once times s). A slot is a sum of N coefficients
(the canonical embedding), hence the factor N; ten standard deviations make a per-slot
failure probability below 1e-20. K ciphertexts add at most K such errors; the last term
covers float64 FFT decoding. The bound is conservative: SEAL divides the encryption
noise by the special prime, which this ignores. For N = 8192 and K = 10 it is 2.8e-6;
measured maximum errors (K = 2..10, 2e4 values) are 1-3 % of it.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import rfc8785
import tenseal as ts
import tenseal.sealapi  # registers the SEAL types (Modulus) that parameter introspection returns
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
    receive_submissions,
    refused_by_key_holder,
)
from .errors import (
    AggregateMismatch,
    ConfigurationError,
    HeadroomExceeded,
    MalformedInput,
    ProtocolError,
    ReplayedMessage,
    RoundAbort,
    TooManyDropouts,
    WrongKey,
)
from .records import exact_fields, integer, number, texts

# Homomorphic Encryption Standard (2018), Table 1: max log2(q) for 128-bit classical
# security, ternary secret distribution.
MAX_COEFF_BITS_128: Mapping[int, int] = {1024: 27, 2048: 54, 4096: 109, 8192: 218, 16384: 438, 32768: 881}
NOISE_SIGMA = 3.2  # SEAL's error standard deviation
PUBLISHED_MARGIN_BITS = 10
"""The published grid step is at least 2^this times the decryption error bound."""
_KEY_FORMAT = "bfl-private/ckks-secret-context/v1"
_CIPHERTEXTS = "ciphertexts"
_OFFSETS = "offsets"
_CONTEXT_ID = "context_id"


@dataclass(frozen=True)
class CkksParameters:
    """Aggregation-only CKKS parameters, checked against the HE standard's 128-bit table."""

    poly_modulus_degree: int = 8192
    coeff_mod_bit_sizes: tuple[int, ...] = (60, 40)
    scale_bits: int = 40

    def __post_init__(self) -> None:
        limit = MAX_COEFF_BITS_128.get(self.poly_modulus_degree)
        if limit is None:
            raise ConfigurationError(f"poly_modulus_degree must be one of {sorted(MAX_COEFF_BITS_128)}")
        if len(self.coeff_mod_bit_sizes) < 2 or sum(self.coeff_mod_bit_sizes) > limit:
            raise ConfigurationError(
                f"coeff_mod_bit_sizes {self.coeff_mod_bit_sizes} (total {sum(self.coeff_mod_bit_sizes)} bits) must "
                f"have >= 2 primes and total <= {limit} bits for 128-bit security at N = {self.poly_modulus_degree}"
            )
        if not 20 <= self.scale_bits < self.data_bits - 1:
            raise ConfigurationError(f"scale_bits {self.scale_bits} must be in [20, {self.data_bits - 1})")

    @property
    def data_bits(self) -> int:
        """Bits of the ciphertext modulus (all primes but SEAL's special last one)."""
        return sum(self.coeff_mod_bit_sizes[:-1])

    @property
    def slots(self) -> int:
        return self.poly_modulus_degree // 2

    @property
    def max_magnitude(self) -> float:
        """Largest |sum| decoded safely: half the headroom below q / (2 Delta)."""
        return float(2 ** (self.data_bits - self.scale_bits - 2))

    def error_bound(self, *, summands: int, clip: float) -> float:
        """Per-coordinate bound on |decrypted sum - float sum| for ``summands`` clients."""
        n, delta = self.poly_modulus_degree, 2.0**self.scale_bits
        coefficient_variance = NOISE_SIGMA**2 * (1 + 4 * n / 3) + (2 + 2 * n / 3) / 12
        sigma_slot = math.sqrt(n * coefficient_variance) / delta
        return summands * 10 * sigma_slot + summands * clip * 2.0**-44

    def published_step(self, *, summands: int) -> float:
        """Grid to which a decrypted sum of ``summands`` is rounded before it is published:
        the smallest power of two >= 2^PUBLISHED_MARGIN_BITS x the error bound at the
        largest clip these parameters decode (so it holds for any admissible clip)."""
        bound = self.error_bound(summands=summands, clip=self.max_magnitude / summands)
        return 2.0 ** math.ceil(math.log2(bound) + PUBLISHED_MARGIN_BITS)

    def to_json(self) -> dict[str, Any]:
        return {"poly_modulus_degree": self.poly_modulus_degree,
                "coeff_mod_bit_sizes": list(self.coeff_mod_bit_sizes), "scale_bits": self.scale_bits}

    @classmethod
    def from_json(cls, data: Any) -> CkksParameters:
        try:
            return cls(poly_modulus_degree=int(data["poly_modulus_degree"]),
                       coeff_mod_bit_sizes=tuple(int(b) for b in data["coeff_mod_bit_sizes"]),
                       scale_bits=int(data["scale_bits"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise MalformedInput(f"bad CKKS parameters {data!r}: {exc}") from exc

    @classmethod
    def of_context(cls, context: ts.Context) -> CkksParameters:
        """Read the parameters a TenSEAL context was really made with."""
        parms = context.seal_context().data.key_context_data().parms()
        scale = context.global_scale
        scale_bits = int(math.log2(scale)) if scale > 0 else 0
        if 2.0**scale_bits != scale:
            raise MalformedInput(f"CKKS context scale {scale!r} is not a power of two")
        return cls(poly_modulus_degree=parms.poly_modulus_degree(),
                   coeff_mod_bit_sizes=tuple(m.bit_count() for m in parms.coeff_modulus()), scale_bits=scale_bits)


@functools.lru_cache(maxsize=8)  # every submission is checked against the same few contexts
def context_id(public_context: bytes) -> bytes:
    """SHA-256 of the serialised public context: binds a submission to the round's keys."""
    return hashlib.sha256(b"bfl-private/ckks/context:" + public_context).digest()


def load_public_context(data: bytes, *, parameters: CkksParameters | None = None) -> ts.Context:
    """Parse a public context, refusing one that holds a secret key or other parameters."""
    try:
        context = ts.context_from(bytes(data))
    except (ValueError, RuntimeError, TypeError) as exc:
        raise MalformedInput(f"CKKS public context does not parse: {exc}") from exc
    if context.is_private():
        raise MalformedInput("CKKS public context holds a secret key: refusing to handle it as public")
    found = CkksParameters.of_context(context)
    if parameters is not None and found != parameters:
        raise WrongKey(f"CKKS context has parameters {found}, expected {parameters}")
    return context


def chunk_lengths(length: int, parameters: CkksParameters) -> list[int]:
    """Slot-sized chunks covering a vector of ``length`` values."""
    full, rest = divmod(length, parameters.slots)
    return [parameters.slots] * full + ([rest] if rest else [])


def encode_submission(public_context: bytes, ciphertexts: Sequence[bytes]) -> bytes:
    """A safetensors blob: the serialised chunk ciphertexts back to back, their offsets, the context id."""
    offsets = np.cumsum([0] + [len(c) for c in ciphertexts], dtype=np.int64)
    return save_safetensors({
        _CIPHERTEXTS: np.frombuffer(b"".join(ciphertexts), dtype=np.uint8),
        _OFFSETS: offsets,
        _CONTEXT_ID: np.frombuffer(context_id(public_context), dtype=np.uint8),
    })


def decode_submission(blob: bytes, *, context: ts.Context, public_context: bytes, length: int,
                      client: str) -> list[ts.CKKSVector]:
    """Parse and check one client's submission; raises a named error saying what and whose."""
    tensors = load_submission_tensors(blob, client=client)
    if set(tensors) != {_CIPHERTEXTS, _OFFSETS, _CONTEXT_ID}:
        raise MalformedInput(f"submission of {client!r} holds tensors {sorted(tensors)}")
    if tensors[_CONTEXT_ID].tobytes() != context_id(public_context):
        raise WrongKey(f"submission of {client!r} was made under another CKKS context")
    data, offsets = tensors[_CIPHERTEXTS], tensors[_OFFSETS]
    parameters = CkksParameters.of_context(context)
    sizes = chunk_lengths(length, parameters)
    if data.dtype != np.uint8 or data.ndim != 1 or offsets.dtype != np.int64 or offsets.shape != (len(sizes) + 1,):
        raise MalformedInput(f"submission of {client!r} must hold {len(sizes)} ciphertexts with int64 offsets")
    if offsets[0] != 0 or offsets[-1] != data.shape[0] or np.any(np.diff(offsets) <= 0):
        raise MalformedInput(f"submission of {client!r} has offsets that do not tile its {data.shape[0]} bytes")
    first_parms = context.seal_context().data.first_parms_id()
    vectors = []
    for index, size in enumerate(sizes):
        where = f"submission of {client!r}, ciphertext {index}"
        try:
            vector = ts.ckks_vector_from(context, data[offsets[index]: offsets[index + 1]].tobytes())
        except (ValueError, RuntimeError, TypeError) as exc:
            raise MalformedInput(f"{where} does not parse under the round's context: {exc}") from exc
        parts = vector.data.ciphertext()
        if len(parts) != 1:
            raise MalformedInput(f"{where} holds {len(parts)} ciphertexts, expected one")
        (ciphertext,) = parts
        if ciphertext.is_transparent() or ciphertext.size() != 2 or ciphertext.parms_id() != first_parms:
            raise MalformedInput(f"{where} is not a fresh two-part encryption at the first level")
        if ciphertext.scale != 2.0**parameters.scale_bits or vector.size() != size:
            raise MalformedInput(f"{where} has scale {ciphertext.scale} and {vector.size()} values, "
                                 f"expected 2^{parameters.scale_bits} and {size}")
        vectors.append(vector)
    return vectors


def _sum(vectors: Sequence[Sequence[ts.CKKSVector]]) -> list[ts.CKKSVector]:
    if not vectors:
        raise MalformedInput("no ciphertext vectors to add")
    totals = list(vectors[0])
    for vector in vectors[1:]:  # ``+`` makes new vectors (cheap, unlike ``copy``): inputs stay untouched
        totals = [total + chunk for total, chunk in zip(totals, vector, strict=True)]
    return totals


def add(vectors: Sequence[Sequence[ts.CKKSVector]]) -> list[bytes]:
    """Sum chunk-wise and serialise: deterministic bytes any party can recompute."""
    return [total.serialize() for total in _sum(vectors)]


def _digests(serialised: Sequence[bytes]) -> list[str]:
    return [hashlib.sha256(c).hexdigest() for c in serialised]


@dataclass(frozen=True)
class CkksDecryption:
    """The key holder's answer: digests of the sum it recomputed, and its decryption
    rounded to ``step`` (see "Published precision")."""

    aggregate_sha256: tuple[str, ...]
    total: np.ndarray
    summands: int
    step: float


class CkksKeyHolder:
    """Owns the CKKS secret key; decrypts only sums it recomputed from the submissions."""

    def __init__(self, context: ts.Context, *, min_summands: int = 2) -> None:
        if not context.is_private():
            raise ConfigurationError("a CKKS key holder needs a context with its secret key")
        if min_summands < 1:
            raise ConfigurationError(f"min_summands must be >= 1, got {min_summands}")
        self.parameters = CkksParameters.of_context(context)
        self._context = context
        self.min_summands = min_summands
        public = context.copy()
        public.make_context_public()
        self.public_context: bytes = public.serialize(save_public_key=True, save_secret_key=False,
                                                      save_galois_keys=False, save_relin_keys=False)
        """Serialised public context (public key only): all clients and aggregators need."""
        self._public = load_public_context(self.public_context, parameters=self.parameters)

    @classmethod
    def generate(cls, *, parameters: CkksParameters | None = None, min_summands: int = 2) -> CkksKeyHolder:
        parameters = parameters or CkksParameters()
        context = ts.context(ts.SCHEME_TYPE.CKKS, poly_modulus_degree=parameters.poly_modulus_degree,
                             coeff_mod_bit_sizes=list(parameters.coeff_mod_bit_sizes))
        context.global_scale = 2.0**parameters.scale_bits
        return cls(context, min_summands=min_summands)

    def to_private_bytes(self) -> bytes:
        """Canonical JSON holding TenSEAL's (protobuf) serialisation of the secret context."""
        blob = self._context.serialize(save_public_key=True, save_secret_key=True,
                                       save_galois_keys=False, save_relin_keys=False)
        return rfc8785.dumps({"format": _KEY_FORMAT, "parameters": self.parameters.to_json(),
                              "context": base64.b64encode(blob).decode("ascii")})

    @classmethod
    def from_private_bytes(cls, data: bytes, *, min_summands: int = 2) -> CkksKeyHolder:
        try:
            record = json.loads(data)
            blob = base64.b64decode(record["context"], validate=True)
        except (ValueError, TypeError, KeyError, binascii.Error) as exc:
            raise MalformedInput(f"CKKS secret context record does not parse: {exc}") from exc
        if record.get("format") != _KEY_FORMAT:
            raise MalformedInput(f"CKKS secret context record lacks format {_KEY_FORMAT!r}")
        try:
            context = ts.context_from(blob)
        except (ValueError, RuntimeError, TypeError) as exc:
            raise MalformedInput(f"CKKS secret context does not parse: {exc}") from exc
        if not context.is_private():
            raise MalformedInput("CKKS secret context record holds no secret key")
        holder = cls(context, min_summands=min_summands)
        if holder.parameters != CkksParameters.from_json(record.get("parameters")):
            raise MalformedInput("CKKS secret context parameters differ from the record's")
        return holder

    def decrypt_aggregate(self, submissions: Mapping[str, bytes], *, length: int, max_summands: int,
                          claimed_sha256: Sequence[str] | None = None) -> CkksDecryption:
        """Recompute the sum of ``submissions``, check it against a claim, decrypt it and
        round the result to :meth:`CkksParameters.published_step` (the unrounded
        decryption never leaves this object)."""
        if len(submissions) < self.min_summands:
            raise TooManyDropouts(f"key holder decrypts sums of at least {self.min_summands} inputs, "
                                  f"got {len(submissions)}", stage="decrypt", required=self.min_summands,
                                  available=len(submissions))
        if len(submissions) > max_summands:
            raise HeadroomExceeded(f"{len(submissions)} submissions exceed max_summands {max_summands}")
        seen: dict[bytes, str] = {}
        vectors = []
        for client in sorted(submissions):
            first = seen.setdefault(bytes(submissions[client]), client)
            if first != client:
                raise ReplayedMessage(f"submission of {client!r} repeats that of {first!r}")
            vectors.append(decode_submission(submissions[client], context=self._public,
                                             public_context=self.public_context, length=length, client=client))
        totals = _sum(vectors)
        digests = _digests([total.serialize() for total in totals])
        if claimed_sha256 is not None and list(claimed_sha256) != digests:
            raise AggregateMismatch("claimed aggregate differs from the sum of the submissions")
        values = []
        for total in totals:
            total.link_context(self._context)
            values.extend(total.decrypt())
        step = self.parameters.published_step(summands=len(vectors))
        rounded = np.round(np.asarray(values, dtype=np.float64) / step) * step
        return CkksDecryption(tuple(digests), rounded, len(vectors), step)


def encrypt_update(vector: np.ndarray, *, context: ts.Context, public_context: bytes, clip: float) -> bytes:
    """A client's step: clip to [-clip, clip], chunk, encrypt each chunk, pack into a blob."""
    return _encrypt_values(np.clip(np.asarray(vector, dtype=np.float64), -clip, clip),
                           context=context, public_context=public_context)


def forged_submission(forgery: ForgedInput, *, context: ts.Context, public_context: bytes) -> bytes:
    """The blob of a client that skips our encoder: its bytes, or any values encrypted unclipped."""
    if forgery.message is not None:
        return forgery.message
    return _encrypt_values(np.asarray(forgery.values, dtype=np.float64), context=context, public_context=public_context)


def _encrypt_values(x: np.ndarray, *, context: ts.Context, public_context: bytes) -> bytes:
    parameters = CkksParameters.of_context(context)
    chunks, start = [], 0
    for size in chunk_lengths(x.shape[0], parameters):
        chunks.append(ts.ckks_vector(context, x[start: start + size]).serialize())
        start += size
    return encode_submission(public_context, chunks)


def _checked_total(total: np.ndarray, *, length: int, summands: int, clip: float, parameters: CkksParameters) -> np.ndarray:
    """A decrypted (and published, rounded) total must be ``length`` finite values no larger
    than ``summands`` clipped inputs plus the noise bound and half the rounding step can
    reach; anything else is not a sum of valid encryptions."""
    limit = (summands * clip + parameters.error_bound(summands=summands, clip=clip)
             + parameters.published_step(summands=summands) / 2)
    if total.shape != (length,) or not np.all(np.isfinite(total)) or np.max(np.abs(total)) > limit:
        worst = float(np.max(np.abs(total))) if total.size and np.all(np.isfinite(total)) else float("nan")
        raise MalformedInput(f"ckks total must be {length} finite values within +-{limit:g}; "
                             f"got shape {total.shape}, largest magnitude {worst:g}")
    return total


class CkksProtocol(AggregationProtocol):
    """CKKS aggregation: the aggregator holds only the public context.

    ``key_holder`` is a handle to the separate decrypting party; this object never reads
    its secret context. The result has ``decryption_provable=False``.
    """

    name: ClassVar[str] = "ckks"

    def __init__(self, *, public_context: bytes, key_holder: CkksKeyHolder, clip: float, max_summands: int) -> None:
        if context_id(public_context) != context_id(key_holder.public_context):
            raise WrongKey("the key holder's context is not the public context this protocol encrypts under")
        if not (math.isfinite(clip) and clip > 0) or max_summands < 1:
            raise ConfigurationError(f"need clip > 0 and max_summands >= 1, got {clip!r}, {max_summands!r}")
        self.public_context = public_context
        self.context = load_public_context(public_context)
        self.parameters = CkksParameters.of_context(self.context)
        if max_summands * clip > self.parameters.max_magnitude:
            raise HeadroomExceeded(f"{max_summands} x clip {clip} exceeds the largest safely decoded sum "
                                   f"{self.parameters.max_magnitude:g} of these CKKS parameters")
        self.key_holder = key_holder
        self.clip = float(clip)
        self.max_summands = max_summands

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
        """Encrypt each update, check and add the ciphertexts, have the key holder decrypt.

        Clients dropped before "unmask" never submit; HE needs no recovery step.
        ``round_seed`` and ``rng`` are unused: CKKS draws its noise inside SEAL.
        """
        length = check_updates(updates)
        forged = check_forged(forged, updates)
        submitters, dropped = one_shot_submitters(updates, drop)
        if len(submitters) > self.max_summands:
            raise HeadroomExceeded(f"{len(submitters)} clients exceed max_summands {self.max_summands}")
        blobs = {c: forged_submission(forged[c], context=self.context, public_context=self.public_context)
                 if c in forged
                 else encrypt_update(updates[c], context=self.context, public_context=self.public_context, clip=self.clip)
                 for c in submitters}
        return self.aggregate_submissions(blobs, round_id=round_id, length=length,
                                          dropped={c: (drop or {})[c] for c in dropped})

    def aggregate_submissions(self, blobs: Mapping[str, bytes], *, round_id: int, length: int,
                              dropped: Mapping[str, Stage]) -> AggregationResult:
        """The aggregator's and key holder's half of :meth:`aggregate`, for submissions
        encrypted wherever the clients are (in this process, or on Flower nodes).

        Every blob is checked on receipt (one that does not decode is rejected with the
        reason), the valid ones are added, and the key holder decrypts only the sum it
        recomputes itself. ``dropped`` names the clients that never submitted.
        """
        if len(blobs) > self.max_summands:
            raise HeadroomExceeded(f"{len(blobs)} submissions exceed max_summands {self.max_summands}")
        received, rejected = receive_submissions(
            blobs, lambda client, blob: decode_submission(blob, context=self.context, public_context=self.public_context,
                                                          length=length, client=client),
            round_id=round_id, drop=dropped,
            fingerprint=lambda chunks: b"".join(chunk.serialize() for chunk in chunks),
        )
        included = sorted(received)
        claimed = _digests(add([received[c] for c in included]))
        submissions = {c: blobs[c] for c in included}
        try:
            decryption = self.key_holder.decrypt_aggregate(submissions, length=length, max_summands=self.max_summands,
                                                           claimed_sha256=claimed)
        except RoundAbort as exc:
            exc.received = dict(blobs)  # sent, so spent, though never decrypted
            raise
        except ProtocolError as exc:  # the key holder refused what the aggregator let through
            raise refused_by_key_holder(exc, round_id=round_id, received=blobs) from exc
        total = decode_or_refuse(lambda: _checked_total(decryption.total, length=length, summands=len(included),
                                                        clip=self.clip, parameters=self.parameters),
                                 round_id=round_id, received=blobs)
        transcript = CkksTranscript(
            round=round_id, parameters=self.parameters, public_context=self.public_context, clip=self.clip,
            max_summands=self.max_summands, length=length, included=tuple(included),
            aggregate_sha256=tuple(decryption.aggregate_sha256), decrypted_total=tuple(decryption.total.tolist()),
            error_bound=self.parameters.error_bound(summands=len(included), clip=self.clip),
            published_step=decryption.step,
        ).to_json()
        return AggregationResult(protocol=self.name, total=total, included=tuple(included),
                                 dropped=tuple(sorted(dropped)), rejected=rejected, submissions=submissions,
                                 rejected_submissions={c: blobs[c] for c in rejected},
                                 transcript=transcript, decryption_provable=False)


@dataclass(frozen=True)
class CkksTranscript:
    """A CKKS round's public record: the parameters and public context the clients
    encrypted under, the clip and headroom, who was summed, the digests of the aggregate
    ciphertexts, and the key holder's claimed total (rounded to ``published_step``), which
    no one can check is the decryption (``decryption_provable`` is always False)."""

    round: int
    parameters: CkksParameters
    public_context: bytes
    clip: float
    max_summands: int
    length: int
    included: tuple[str, ...]
    aggregate_sha256: tuple[str, ...]
    decrypted_total: tuple[float, ...]
    error_bound: float
    published_step: float

    @property
    def summed(self) -> tuple[str, ...]:
        return self.included

    def to_json(self) -> dict[str, Any]:
        return {
            "protocol": CkksProtocol.name,
            "round": self.round,
            "parameters": self.parameters.to_json(),
            "public_context": base64.b64encode(self.public_context).decode("ascii"),
            "clip": self.clip,
            "max_summands": self.max_summands,
            "length": self.length,
            "included": list(self.included),
            "aggregate_sha256": list(self.aggregate_sha256),
            "decrypted_total": list(self.decrypted_total),
            "error_bound": self.error_bound,
            "published_step": self.published_step,
            "decryption_provable": False,
        }

    @classmethod
    def from_json(cls, data: Any, *, where: str) -> CkksTranscript:
        fields = exact_fields(data, _TRANSCRIPT_FIELDS, what="ckks transcript", where=where)
        if fields["protocol"] != CkksProtocol.name:
            raise MalformedInput(f"{where}: not a ckks transcript (protocol {fields['protocol']!r:.40})")
        if fields["decryption_provable"] is not False:
            raise MalformedInput(f"{where}: a CKKS decryption is never provable, the transcript says "
                                 f"{fields['decryption_provable']!r:.40}")
        parameters = CkksParameters.from_json(
            exact_fields(fields["parameters"], {"poly_modulus_degree", "coeff_mod_bit_sizes", "scale_bits"},
                         what="CKKS parameters", where=where))
        if parameters.to_json() != fields["parameters"]:
            raise MalformedInput(f"{where}: CKKS parameters {fields['parameters']!r:.120} are not integers")
        public_context = fields["public_context"]
        try:
            raw_context = base64.b64decode(public_context, validate=True)
        except (TypeError, ValueError, binascii.Error) as exc:
            raise MalformedInput(f"{where}: public_context is not base64: {exc}") from exc
        if base64.b64encode(raw_context).decode("ascii") != public_context:  # one spelling: it is written back
            raise MalformedInput(f"{where}: public_context is not canonical base64")
        total = fields["decrypted_total"]
        if not isinstance(total, list):
            raise MalformedInput(f"{where}: decrypted_total must be a list of numbers")
        return cls(
            round=integer(fields["round"], what="round", where=where),
            parameters=parameters,
            public_context=raw_context,
            clip=number(fields["clip"], what="clip", where=where),
            max_summands=integer(fields["max_summands"], what="max_summands", where=where),
            length=integer(fields["length"], what="length", where=where),
            included=texts(fields["included"], what="included", where=where),
            aggregate_sha256=texts(fields["aggregate_sha256"], what="aggregate_sha256", where=where),
            decrypted_total=tuple(number(v, what="decrypted_total", where=where) for v in total),
            error_bound=number(fields["error_bound"], what="error_bound", where=where),
            published_step=number(fields["published_step"], what="published_step", where=where),
        )


TRANSCRIPT = CkksTranscript
_TRANSCRIPT_FIELDS = {
    "protocol", "round", "parameters", "public_context", "clip", "max_summands", "length", "included",
    "aggregate_sha256", "decrypted_total", "error_bound", "published_step", "decryption_provable",
}


def recompute_from_submissions(transcript: Mapping[str, Any], submissions: Mapping[str, bytes]) -> np.ndarray:
    """Recompute the sum ciphertext and return the key holder's claimed total.

    CKKS decryption is **not provable**: this checks that the recorded aggregate is the
    sum of the committed submissions under the recorded public context, and that the
    claimed total is in range (|total| <= included * clip + error bound + step / 2) and
    rounded to the published step; it cannot check
    that the claimed total is the decryption of that aggregate.
    """
    record = CkksTranscript.from_json(transcript, where="ckks transcript")
    parameters, clip, length, included = record.parameters, record.clip, record.length, record.included
    context = load_public_context(record.public_context, parameters=parameters)
    if not included or len(set(included)) != len(included):
        raise MalformedInput("ckks transcript lacks a non-empty list of distinct 'included' clients")
    if len(included) > record.max_summands or not clip > 0 or record.max_summands * clip > parameters.max_magnitude:
        raise HeadroomExceeded(f"ckks transcript: {len(included)} clients x clip {clip!r} exceed what decodes safely")
    missing = sorted(set(included) - set(submissions))
    if missing:
        raise MalformedInput(f"ckks transcript names clients without a submission: {missing}")
    vectors = [decode_submission(submissions[c], context=context, public_context=record.public_context,
                                 length=length, client=c) for c in sorted(included)]
    if _digests(add(vectors)) != list(record.aggregate_sha256):
        raise AggregateMismatch("recorded aggregate differs from the sum of the submissions")
    total = np.asarray(record.decrypted_total, dtype=np.float64)
    total = _checked_total(total, length=length, summands=len(included), clip=clip, parameters=parameters)
    step = parameters.published_step(summands=len(included))
    if record.published_step != step or not np.array_equal(np.round(total / step) * step, total):
        raise MalformedInput(f"ckks claimed total is not rounded to the published step {step:g}: "
                             f"its low-order digits would expose the decryption error")
    return total


def decoding_tolerance(transcript: Mapping[str, Any]) -> float:
    """CKKS's noise bound for the included count, plus half the published rounding step."""
    record = CkksTranscript.from_json(transcript, where="ckks transcript")
    parameters, clip, included = record.parameters, record.clip, record.included
    summands = len(included)
    return parameters.error_bound(summands=summands, clip=clip) + parameters.published_step(summands=summands) / 2
