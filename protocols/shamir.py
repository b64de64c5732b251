"""Shamir secret sharing (Shamir, CACM 1979) over the prime field GF(2^256 + 297).

The field is the smallest prime field that holds any 32-byte secret (an X25519 private
key, which is raw 32 bytes before clamping, does not fit under 2^255 - 19). A secret s
is shared with threshold t by a random polynomial f of degree t-1 with f(0) = s; the
share of the party at abscissa x is f(x). Any t shares determine s by Lagrange
interpolation at 0; any t-1 shares are uniformly distributed whatever s is.

Why it is fast enough: powers of each abscissa are computed once per threshold and
reused by every dealer, so a share costs t-1 big-integer products and a single reduction
(:func:`split_many` deals a client's two secrets in one pass); Lagrange coefficients at 0
are computed once per set of responders and reused for every secret reconstructed from
that set, and :func:`lagrange_at_zero_many` computes those of many sets with a single
modular inversion in all (Montgomery's trick).
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
    return lagrange_at_zero_many([xs])[0]


def lagrange_at_zero_many(sets: Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """:func:`lagrange_at_zero` of many abscissa sets with one modular inversion in all.

    λ_i = Π_{j≠i} x_j / Π_{j≠i} (x_j − x_i). Numerators and denominators are formed as
    plain integer products (abscissas are party numbers, so they stay far below p and
    cost no reduction) and every denominator of every set is inverted at once by
    Montgomery's trick (one ``pow(·, -1, p)`` and three products per denominator instead
    of one inversion each): the server reconstructs one secret per client, each from a
    different set of neighbours, so per-set inversions were its Shamir cost. A
    denominator is a product of non-zero differences of distinct field elements, hence
    non-zero mod p.
    """
    numerators: list[int] = []
    denominators: list[int] = []
    for xs in sets:
        xs = tuple(xs)
        for i, xi in enumerate(xs):
            numerator, denominator = 1, 1
            for j, xj in enumerate(xs):
                if j != i:
                    numerator *= xj
                    denominator *= xj - xi
            numerators.append(numerator % PRIME)
            denominators.append(denominator % PRIME)
    inverses = _batch_inverse(denominators)
    out: list[tuple[int, ...]] = []
    at = 0
    for xs in sets:
        size = len(xs)
        out.append(
            tuple(
                numerators[at + i] * inverses[at + i] % PRIME for i in range(size)
            )
        )
        at += size
    return out


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses mod p of non-zero ``values`` (Montgomery's trick: one inversion)."""
    if not values:
        return []
    prefix = [0] * len(values)
    running = 1
    for i, value in enumerate(values):
        prefix[i] = running
        running = running * value % PRIME
    inverse = pow(running, -1, PRIME)
    out = [0] * len(values)
    for i in range(len(values) - 1, -1, -1):
        out[i] = inverse * prefix[i] % PRIME
        inverse = inverse * values[i] % PRIME
    return out


def _check_abscissas(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise MalformedInput(f"share abscissas must be distinct, got {sorted(xs)}")
    for x in xs:
        if not 0 < x < PRIME:
            raise MalformedInput(f"share abscissa {x} is outside 1..p-1")


def split(secret: bytes, *, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Share ``secret`` among the abscissas ``xs``; any ``threshold`` of them recover it."""
    return split_many([secret], threshold=threshold, xs=xs)[0]


def split_many(
    secrets_: Sequence[bytes], *, threshold: int, xs: Sequence[int]
) -> list[dict[int, int]]:
    """:func:`split` of several secrets among the same abscissas, each with its own fresh
    random polynomial; the power table of each abscissa is looked up once for all."""
    for secret in secrets_:
        if not isinstance(secret, (bytes, bytearray)) or not 0 < len(secret) <= MAX_SECRET_BYTES:
            raise MalformedInput(f"secret must be 1..{MAX_SECRET_BYTES} bytes")
    if not 1 <= threshold <= len(xs):
        raise MalformedInput(
            f"threshold {threshold} must be in 1..{len(xs)} (the number of shares)"
        )
    xs = tuple(xs)
    _check_abscissas(xs)
    polynomials = [
        (int.from_bytes(secret, "big"), [secrets.randbelow(PRIME) for _ in range(threshold - 1)])
        for secret in secrets_
    ]
    return evaluate(polynomials, xs)


def evaluate(
    polynomials: Sequence[tuple[int, Sequence[int]]], xs: Sequence[int]
) -> list[dict[int, int]]:
    """Each polynomial (constant, [c_1, ..., c_{t-1}]) at each abscissa, mod p: one
    reduction per share, over the cached powers of the abscissa."""
    out: list[dict[int, int]] = [{} for _ in polynomials]
    degree = max((len(c) for _, c in polynomials), default=0)
    for x in xs:
        powers = _powers(x, degree)
        for shares, (constant, coefficients) in zip(out, polynomials):
            shares[x] = (constant + sum(map(mul, coefficients, powers))) % PRIME
    return out


def combine(
    shares: Mapping[int, int],
    *,
    threshold: int,
    secret_bytes: int,
    coefficients: Mapping[tuple[int, ...], tuple[int, ...]] | None = None,
) -> bytes:
    """Recover a ``secret_bytes``-long secret from at least ``threshold`` shares.

    The ``threshold`` shares with the smallest abscissas are used, so every caller with
    the same responders reuses one set of Lagrange coefficients. A value that does not
    fit in ``secret_bytes`` means the shares were not of one such secret.
    ``coefficients`` may hold Lagrange coefficients computed beforehand for abscissa
    sets (:func:`lagrange_at_zero_many`); a set not in it is computed here.
    """
    if len(shares) < threshold:
        raise TooManyDropouts(
            f"{len(shares)} shares cannot recover a secret of threshold {threshold}",
            required=threshold,
            available=len(shares),
        )
    xs = tuple(sorted(shares)[:threshold])
    _check_abscissas(xs)
    lagrange = coefficients.get(xs) if coefficients is not None else None
    if lagrange is None:
        lagrange = lagrange_at_zero(xs)
    value = sum(map(mul, lagrange, (shares[x] for x in xs))) % PRIME
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
