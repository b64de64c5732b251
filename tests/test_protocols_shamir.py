"""Shamir sharing over GF(2^256 + 297): recovery, threshold secrecy, bad shares."""

from __future__ import annotations

import os
import random

import gmpy2
import numpy as np
import pytest
from bfl_private.protocols import shamir
from bfl_private.protocols.errors import MalformedInput, TooManyDropouts
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import ks_2samp


def _interpolate_at_zero(points: dict[int, int]) -> int:
    """Textbook Lagrange interpolation, independent of shamir.lagrange_at_zero's caching."""
    p = shamir.PRIME
    total = 0
    for xi, yi in points.items():
        term = yi
        for xj in points:
            if xj != xi:
                term = term * xj * pow(xj - xi, p - 2, p) % p
        total = (total + term) % p
    return total


def test_field_is_prime_and_holds_32_byte_secrets() -> None:
    assert gmpy2.is_prime(shamir.PRIME, 50)
    assert shamir.PRIME > 2**256


@settings(max_examples=40, deadline=None)
@given(
    secret=st.binary(min_size=1, max_size=32),
    n=st.integers(2, 30),
    data=st.data(),
)
def test_any_t_shares_recover_the_secret(secret: bytes, n: int, data) -> None:
    t = data.draw(st.integers(1, n))
    xs = sorted(data.draw(st.sets(st.integers(1, 10**6), min_size=n, max_size=n)))
    shares = shamir.split(secret, threshold=t, xs=xs)
    subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    got = shamir.combine({x: shares[x] for x in subset}, threshold=t, secret_bytes=len(secret))
    assert got == secret
    assert _interpolate_at_zero({x: shares[x] for x in subset[:t]}) == int.from_bytes(secret, "big")


def test_fewer_than_t_shares_are_refused() -> None:
    shares = shamir.split(os.urandom(32), threshold=5, xs=range(1, 11))
    with pytest.raises(
        TooManyDropouts, match="4 shares cannot recover a secret of threshold 5"
    ) as info:
        shamir.combine({x: shares[x] for x in (1, 2, 3, 4)}, threshold=5, secret_bytes=32)
    assert (info.value.required, info.value.available) == (5, 4)


def test_t_minus_one_shares_reveal_nothing() -> None:
    """t-1 shares of two very different secrets are identically (uniformly) distributed."""
    t, xs = 4, tuple(range(1, 8))
    zeros, ones = bytes(32), b"\xff" * 32
    a = [shamir.split(zeros, threshold=t, xs=xs) for _ in range(400)]
    b = [shamir.split(ones, threshold=t, xs=xs) for _ in range(400)]
    for x in (1, 2, 3):  # any t-1 = 3 abscissas
        top_a = [s[x] >> 200 for s in a]
        top_b = [s[x] >> 200 for s in b]
        assert ks_2samp(top_a, top_b).pvalue > 1e-4
        assert (
            ks_2samp(top_a, np.random.default_rng(x).integers(0, shamir.PRIME >> 200, 400)).pvalue
            > 1e-4
        )
    # Interpolating only t-1 shares lands on a random field element, not the secret.
    guess = _interpolate_at_zero({x: a[0][x] for x in (1, 2, 3)})
    assert guess != 0


def test_random_garbage_share_is_detected_by_the_secret_width() -> None:
    """A garbage share moves f(0) to a random field element, wider than 16 bytes w.p. 1 - 2^-129.

    (A crafted small perturbation is not caught this way; the masking protocol checks
    reconstructed mask keys against their advertised public keys.)"""
    secret = os.urandom(16)
    shares = shamir.split(secret, threshold=3, xs=[1, 2, 3, 4])
    shares[2] = int.from_bytes(os.urandom(32), "big")
    with pytest.raises(MalformedInput, match="not shares of one secret"):
        shamir.combine({x: shares[x] for x in (1, 2, 3)}, threshold=3, secret_bytes=16)


def test_lagrange_coefficients_are_reused_per_responder_set() -> None:
    shamir.lagrange_at_zero.cache_clear()
    xs = list(range(1, 21))
    for _ in range(5):
        shares = shamir.split(os.urandom(32), threshold=10, xs=xs)
        shamir.combine(shares, threshold=10, secret_bytes=32)
    info = shamir.lagrange_at_zero.cache_info()
    assert (info.misses, info.hits) == (1, 4)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: shamir.split(b"", threshold=1, xs=[1]), "1..32 bytes"),
        (lambda: shamir.split(bytes(33), threshold=1, xs=[1]), "1..32 bytes"),
        (lambda: shamir.split(b"s", threshold=3, xs=[1, 2]), "threshold 3"),
        (lambda: shamir.split(b"s", threshold=1, xs=[1, 1]), "distinct"),
        (lambda: shamir.split(b"s", threshold=1, xs=[0]), "outside"),
        (lambda: shamir.decode_share(bytes(32)), "33 bytes"),
        (lambda: shamir.decode_share(b"\xff" * 33), ">= p"),
    ],
)
def test_bad_arguments_are_named(call, message: str) -> None:
    with pytest.raises(MalformedInput, match=message):
        call()


def test_shares_round_trip_through_bytes() -> None:
    value = random.Random(1).randrange(shamir.PRIME)
    assert shamir.decode_share(shamir.encode_share(value)) == value


def _scalar_lagrange(xs: tuple[int, ...]) -> tuple[int, ...]:
    """One inversion per coefficient, reduced at every step: the textbook form."""
    p = shamir.PRIME
    out = []
    for i, xi in enumerate(xs):
        numerator, denominator = 1, 1
        for j, xj in enumerate(xs):
            if j != i:
                numerator = numerator * xj % p
                denominator = denominator * (xj - xi) % p
        out.append(numerator * pow(denominator, -1, p) % p)
    return tuple(out)


@settings(max_examples=60, deadline=None)
@given(
    sets=st.lists(
        st.sets(
            st.one_of(st.integers(1, 5000), st.integers(1, shamir.PRIME - 1)),
            min_size=1,
            max_size=25,
        ),
        min_size=0,
        max_size=12,
    )
)
def test_batched_lagrange_equals_scalar_lagrange(sets) -> None:
    """One Montgomery inversion for all sets gives the per-coefficient inversions' result,
    for small party numbers and for any field elements."""
    sets = [tuple(random.sample(sorted(s), len(s))) for s in sets]
    assert shamir.lagrange_at_zero_many(sets) == [_scalar_lagrange(xs) for xs in sets]


@settings(max_examples=40, deadline=None)
@given(
    secrets_=st.lists(st.binary(min_size=1, max_size=32), min_size=1, max_size=3),
    n=st.integers(2, 25),
    data=st.data(),
)
def test_split_many_deals_each_secret_like_split(secrets_, n: int, data) -> None:
    """Several secrets dealt in one pass: each is recovered from any t of its own shares,
    the shares are the textbook evaluation of a polynomial with that constant term, and
    the polynomials are independent (no two secrets share coefficients)."""
    t = data.draw(st.integers(1, n))
    xs = sorted(data.draw(st.sets(st.integers(1, 10**6), min_size=n, max_size=n)))
    dealt = shamir.split_many(secrets_, threshold=t, xs=xs)
    assert len(dealt) == len(secrets_)
    for secret, shares in zip(secrets_, dealt):
        assert sorted(shares) == xs
        subset = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
        assert _interpolate_at_zero({x: shares[x] for x in subset[:t]}) == int.from_bytes(secret, "big")
        got = shamir.combine({x: shares[x] for x in subset}, threshold=t, secret_bytes=len(secret))
        assert got == secret
    if t > 1 and len(secrets_) > 1 and n > t:
        x = xs[-1]
        differences = {(s[x] - int.from_bytes(c, "big")) % shamir.PRIME for c, s in zip(secrets_, dealt)}
        assert len(differences) == len(secrets_)


def test_evaluate_is_the_polynomial_at_each_abscissa() -> None:
    p = shamir.PRIME
    rng = random.Random(5)
    polynomials = [(rng.randrange(p), [rng.randrange(p) for _ in range(d)]) for d in (0, 3, 7)]
    xs = [1, 2, 77, 4096]
    got = shamir.evaluate(polynomials, xs)
    for (constant, coefficients), shares in zip(polynomials, got):
        for x in xs:
            assert shares[x] == (constant + sum(c * pow(x, j + 1, p) for j, c in enumerate(coefficients))) % p


def test_combine_uses_given_coefficients_and_agrees_with_computing_them() -> None:
    secret = os.urandom(32)
    shares = shamir.split(secret, threshold=4, xs=range(1, 9))
    xs = (2, 3, 5, 7)
    table = dict(zip([xs], shamir.lagrange_at_zero_many([xs])))
    subset = {x: shares[x] for x in xs}
    assert shamir.combine(subset, threshold=4, secret_bytes=32, coefficients=table) == secret
    assert shamir.combine(subset, threshold=4, secret_bytes=32, coefficients={}) == secret
    wrong = {xs: tuple(reversed(table[xs]))}
    # The table is what combine uses: wrong coefficients give a wrong secret.
    assert shamir.combine(subset, threshold=4, secret_bytes=32, coefficients=wrong) != secret
