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
