"""Shamir secret sharing (Shamir, CACM 1979) over the prime field GF(2^256 + 297).

The field is the smallest prime field that holds any 32-byte secret (an X25519 private
key, which is raw 32 bytes before clamping, does not fit under 2^255 - 19). A secret s
is shared with threshold t by a random polynomial f of degree t-1 with f(0) = s; the
share of the party at abscissa x is f(x). Any t shares determine s by Lagrange
interpolation at 0; any t-1 shares are uniformly distributed whatever s is.

Why it is fast enough: powers of each abscissa are computed once per threshold and
reused by every dealer, so a share costs t-1 big-integer products and a single reduction; Lagrange coefficients at 0 are computed once per set of responders
(one modular inverse each) and reused for every secret reconstructed from that set.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence
from functools import lru_cache
from operator import mul

from .errors import MalformedInput, TooManyDropouts

PRIME = (1 << 256) + 297
"""The field modulus; primality is checked in the tests with gmpy2."""
SHARE_BYTES = 33
"""Big-endian width of one field element."""
MAX_SECRET_BYTES = 32


@lru_cache(maxsize=4096)
def _powers(x: int, degree: int) -> tuple[int, ...]:
    """x, x^2, ..., x^degree mod p. Cached per abscissa, not per abscissa set: each dealer
    shares among a different set of neighbours, but the abscissas are the same N numbers."""
    powers, power = [], 1
    for _ in range(degree):
        power = power * x % PRIME
        powers.append(power)
    return tuple(powers)


@lru_cache(maxsize=256)
def lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """Coefficients λ_i with f(0) = Σ λ_i f(x_i) for any f of degree < len(xs)."""
    coefficients = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % PRIME
                denominator = denominator * (xj - xi) % PRIME
        coefficients.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(coefficients)


def _check_abscissas(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise MalformedInput(f"share abscissas must be distinct, got {sorted(xs)}")
    for x in xs:
        if not 0 < x < PRIME:
            raise MalformedInput(f"share abscissa {x} is outside 1..p-1")


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Share ``secret`` among the abscissas ``xs``; any ``threshold`` of them recover it."""
    if not isinstance(secret, (bytes, bytearray)) or not 0 < len(secret) <= MAX_SECRET_BYTES:
        raise MalformedInput(f"secret must be 1..{MAX_SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise MalformedInput(
            f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)"
        )
    xs = tuple(xs)
    _check_abscissas(xs)
    constant = int.from_bytes(secret, "big")
    coefficients = [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {
        x: (constant + sum(map(mul, coefficients, _powers(x, threshold - 1)))) % PRIME
        for x in xs
    }


def combine(shares: Mapping[int, int], *, threshold: int, secret_bytes: int) -> bytes:
    """Recover a ``secret_bytes``-long secret from at least ``threshold`` shares.

    The ``threshold`` shares with the smallest abscissas are used, so every caller with
    the same responders reuses one set of Lagrange coefficients. A value that does not
    fit in ``secret_bytes`` means the shares were not of one such secret.
    """
    if len(shares) < threshold:
        raise TooManyDropouts(
            f"{len(shares)} shares cannot recover a secret of threshold {threshold}",
            required=threshold,
            available=len(shares),
        )
    xs = tuple(sorted(shares)[:threshold])
    _check_abscissas(xs)
    value = sum(map(mul, lagrange_at_zero(xs), (shares[x] for x in xs))) % PRIME
    if value >> (8 * secret_bytes):
        raise MalformedInput(
            f"shares at {list(xs)} interpolate to a value wider than {secret_bytes} bytes: "
            "they are not shares of one secret"
        )
    return value.to_bytes(secret_bytes, "big")


def encode_share(value: int) -> bytes:
    return value.to_bytes(SHARE_BYTES, "big")


def decode_share(data: bytes) -> int:
    """Parse one share; refuses a wrong width or a value outside the field."""
    if len(data) != SHARE_BYTES:
        raise MalformedInput(f"a share is {SHARE_BYTES} bytes, got {len(data)}")
    value = int.from_bytes(data, "big")
    if value >= PRIME:
        raise MalformedInput("share value is not a field element (>= p)")
    return value
