"""Fixed-point encoding of float vectors into Z_(2^32), shared by every protocol.

A value x is clipped to [-c, c] and mapped to an integer level in [0, L] with
L = 2^b - 1 by *stochastic* rounding, so the encoding is unbiased:

    level(x) = floor(u) + Bernoulli(u - floor(u)),   u = (x + c) / step,   step = 2c / L

Levels are summed in uint32 arithmetic (wrap-around is the group operation of the
masking protocol). A sum of n encoded vectors decodes exactly as

    sum_x = step * sum_levels - n * c

Error bound (documented and tested): each value's encoding error is below one ``step``
in absolute value and has mean zero, so the decoded sum of n clipped vectors differs
from the float sum of the clipped values by less than ``n * step`` per coordinate.

Overflow: the sum of n levels is at most n * L; that must stay below the modulus 2^32
or the decoded sum would wrap. ``FixedPointCodec`` refuses such a configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from .errors import ConfigurationError, MalformedInput

MODULUS_BITS = 32
MODULUS = 1 << MODULUS_BITS


def _checked_sum(total: np.ndarray, summands: int, max_summands: int) -> np.ndarray:
    """``total`` as a 1-D uint32 array, for ``summands`` in 1..``max_summands``; MalformedInput otherwise."""
    if not 0 < summands <= max_summands:
        raise MalformedInput(f"summands must be in 1..{max_summands}, got {summands}")
    t = np.asarray(total)
    if t.dtype != np.uint32 or t.ndim != 1:
        raise MalformedInput(f"expected a 1-D uint32 sum, got {t.dtype} of shape {t.shape}")
    return t


@dataclass(frozen=True)
class FixedPointCodec:
    """Clip to ``[-clip, clip]`` and encode on ``bits`` bits, for up to ``max_summands`` clients."""

    clip: float
    bits: int
    max_summands: int

    def __post_init__(self) -> None:
        if not (np.isfinite(self.clip) and self.clip > 0):
            raise ConfigurationError(f"clip must be a positive finite number, got {self.clip!r}")
        if not 1 <= self.bits <= MODULUS_BITS:
            raise ConfigurationError(f"bits must be in 1..{MODULUS_BITS}, got {self.bits}")
        if self.max_summands < 1:
            raise ConfigurationError(f"max_summands must be >= 1, got {self.max_summands}")
        if self.max_summands * self.levels >= MODULUS:
            # The exact limits, not a power-of-two approximation: n * (2^b - 1) <= 2^32 - 1.
            max_bits = ((MODULUS - 1) // self.max_summands + 1).bit_length() - 1
            max_clients = (MODULUS - 1) // self.levels
            raise ConfigurationError(
                f"{self.max_summands} summands x (2^{self.bits}-1) levels overflow the modulus "
                f"2^{MODULUS_BITS}: lower bits to at most {max_bits}, or max_summands to at most "
                f"{max_clients}"
            )

    @property
    def levels(self) -> int:
        """The largest level L = 2^bits - 1."""
        return (1 << self.bits) - 1

    @property
    def step(self) -> float:
        """Width of one quantisation level: the per-value error bound."""
        return 2.0 * self.clip / self.levels

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Clip, stochastically round and return uint32 levels in ``[0, L]``."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise MalformedInput(f"expected a 1-D vector, got shape {x.shape}")
        if not np.all(np.isfinite(x)):
            bad = int(np.flatnonzero(~np.isfinite(x))[0])
            raise MalformedInput(f"non-finite value {x[bad]!r} at index {bad}")
        rng = rng if rng is not None else np.random.default_rng()
        # In place, the same operations in the same order (so the same levels for the
        # same rng): a temporary per step cost as much as the arithmetic on long vectors.
        u = np.clip(x, -self.clip, self.clip)
        u += self.clip
        u /= self.step
        level = np.floor(u)
        u -= level
        level += rng.random(u.shape) < u
        np.minimum(level, self.levels, out=level)
        return level.astype(np.uint32)

    def decode_sum(self, total: np.ndarray, summands: int) -> np.ndarray:
        """Decode the uint32 sum of ``summands`` encoded vectors to float64."""
        t = _checked_sum(total, summands, self.max_summands)
        if int(t.max(initial=0)) > summands * self.levels:
            raise MalformedInput(
                f"sum level {int(t.max())} exceeds {summands} x {self.levels}: not a sum of "
                f"{summands} valid encodings"
            )
        return t.astype(np.float64) * self.step - summands * self.clip

    def to_json(self) -> dict:
        """The codec's parameters as a JSON object, for transcripts and ledger records."""
        return {
            "clip": float(self.clip),
            "bits": int(self.bits),
            "max_summands": int(self.max_summands),
        }

    @classmethod
    def from_json(cls, data: dict) -> FixedPointCodec:
        """Parse :meth:`to_json` output strictly: integers must be JSON integers, not 16.5."""
        try:
            clip, bits, max_summands = data["clip"], data["bits"], data["max_summands"]
        except (KeyError, TypeError) as exc:
            raise MalformedInput(
                f"bad fixed-point codec parameters {data!r}: missing {exc}"
            ) from exc
        for name, value in (("bits", bits), ("max_summands", max_summands)):
            if not isinstance(value, int) or isinstance(value, bool):
                raise MalformedInput(
                    f"fixed-point codec parameter {name!r} must be an integer, got {value!r}"
                )
        if not isinstance(clip, (int, float)) or isinstance(clip, bool):
            raise MalformedInput(
                f"fixed-point codec parameter 'clip' must be a number, got {clip!r}"
            )
        return cls(clip=float(clip), bits=bits, max_summands=max_summands)


@dataclass(frozen=True)
class IntegerRingCodec:
    """Integer vectors (distributed DP's rounded gradients plus noise shares) as words of
    Z_(2^32), two's complement; their sum is read back as signed 32-bit integers.

    Unlike :class:`FixedPointCodec` the sum wraps by design: the participants' integers are
    signed, and the sum is correct whenever the true sum lies in [-2^31, 2^31), which the
    distributed-DP plan checks at setup (:meth:`~bfl_private.privacy.skellam.ShareParameters.check_modulus`).
    Decoding is exact, so the encoding error bound (``step``) is zero.
    """

    max_summands: int
    kind: ClassVar[str] = "integer_ring"
    bits: ClassVar[int] = MODULUS_BITS
    step: ClassVar[float] = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.max_summands, bool) or not isinstance(self.max_summands, int) or self.max_summands < 1:
            raise ConfigurationError(f"max_summands must be an integer >= 1, got {self.max_summands!r}")

    def encode(self, values: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        """Integer-valued ``values`` in [-2^31, 2^31) as uint32 words (``rng`` is unused: exact)."""
        x = np.asarray(values, dtype=np.float64)
        if x.ndim != 1:
            raise MalformedInput(f"expected a 1-D vector, got shape {x.shape}")
        bad = np.flatnonzero(~np.isfinite(x) | (x != np.round(x)) | (x < -(MODULUS >> 1)) | (x >= MODULUS >> 1))
        if bad.size:
            raise MalformedInput(f"value {x[bad[0]]!r} at index {int(bad[0])} is not a signed 32-bit integer")
        return x.astype(np.int64).astype(np.uint32)

    def decode_sum(self, total: np.ndarray, summands: int) -> np.ndarray:
        """The uint32 sum of ``summands`` encoded vectors as signed integers (float64, exact)."""
        return _checked_sum(total, summands, self.max_summands).view(np.int32).astype(np.float64)

    def to_json(self) -> dict:
        return {"kind": self.kind, "max_summands": int(self.max_summands)}


Codec = FixedPointCodec | IntegerRingCodec
"""How a protocol turns clients' vectors into words of Z_(2^32) and a sum back."""


def codec_from_json(data: object) -> Codec:
    """The codec a transcript or round opening names: ``integer_ring``, else fixed point."""
    if not isinstance(data, dict):
        raise MalformedInput(f"codec parameters must be an object, got {type(data).__name__}")
    if data.get("kind") == IntegerRingCodec.kind:
        if set(data) != {"kind", "max_summands"}:
            raise MalformedInput(f"integer_ring codec holds exactly kind and max_summands, got {sorted(data)}")
        return IntegerRingCodec(max_summands=data["max_summands"])
    return FixedPointCodec.from_json(data)
