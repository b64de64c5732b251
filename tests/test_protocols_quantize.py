"""FixedPointCodec: error bound, unbiasedness, overflow refusal, exact decoding; IntegerRingCodec: exact signed sums."""

from __future__ import annotations

import numpy as np
import pytest
from bfl_private.protocols.errors import ConfigurationError, MalformedInput
from bfl_private.protocols.quantize import MODULUS, FixedPointCodec, IntegerRingCodec, codec_from_json
from hypothesis import given, settings
from hypothesis import strategies as st


@settings(max_examples=40, deadline=None)
@given(
    clip=st.floats(0.01, 100.0),
    bits=st.integers(2, 24),
    n=st.integers(1, 20),
    length=st.integers(1, 50),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_sum_within_documented_bound(
    clip: float, bits: int, n: int, length: int, seed: int
) -> None:
    codec = FixedPointCodec(clip=clip, bits=bits, max_summands=n)
    rng = np.random.default_rng(seed)
    values = rng.uniform(-2 * clip, 2 * clip, size=(n, length))
    total = np.zeros(length, dtype=np.uint32)
    for row in values:
        encoded = codec.encode(row, rng)
        assert encoded.dtype == np.uint32
        assert int(encoded.max()) <= codec.levels
        total += encoded
    decoded = codec.decode_sum(total, n)
    exact = np.clip(values, -clip, clip).sum(axis=0)
    # Documented bound: |error| < n * step per coordinate (plus float64 rounding).
    assert np.all(np.abs(decoded - exact) <= n * codec.step * (1 + 1e-9) + 1e-9 * n * clip)


def test_stochastic_rounding_is_unbiased() -> None:
    codec = FixedPointCodec(clip=1.0, bits=4, max_summands=1)
    x = np.full(200_000, 0.123456)  # far from any level: deterministic rounding would be biased
    levels = codec.encode(x, np.random.default_rng(7))
    mean = float(levels.mean()) * codec.step - codec.clip
    # Standard error of the mean is at most step / (2 sqrt(n)); allow 5 standard errors.
    assert abs(mean - 0.123456) < 5 * codec.step / (2 * np.sqrt(x.size))
    nearest = np.round((0.123456 + 1.0) / codec.step) * codec.step - 1.0
    assert abs(nearest - 0.123456) > 10 * codec.step / (2 * np.sqrt(x.size))


def test_exact_levels_decode_exactly() -> None:
    codec = FixedPointCodec(clip=2.0, bits=8, max_summands=3)
    grid = np.arange(codec.levels + 1) * codec.step - codec.clip  # values on the level grid
    encoded = codec.encode(grid, np.random.default_rng(0))
    np.testing.assert_array_equal(encoded, np.arange(codec.levels + 1, dtype=np.uint32))
    np.testing.assert_allclose(codec.decode_sum(encoded * np.uint32(3), 3), 3 * grid, atol=1e-12)


def test_clipping_saturates_at_the_ends() -> None:
    codec = FixedPointCodec(clip=1.0, bits=16, max_summands=2)
    encoded = codec.encode(np.array([-5.0, 5.0, -1.0, 1.0]), np.random.default_rng(0))
    np.testing.assert_array_equal(encoded, [0, codec.levels, 0, codec.levels])


def test_largest_legal_configuration_reaches_but_never_wraps_the_modulus() -> None:
    codec = FixedPointCodec(clip=1.0, bits=30, max_summands=4)  # 4 * (2^30 - 1) = 2^32 - 4
    top = codec.encode(np.array([1.0]), np.random.default_rng(0))
    total = (top * np.uint32(4)).astype(np.uint32)
    assert int(total[0]) == 4 * codec.levels < MODULUS
    assert codec.decode_sum(total, 4)[0] == pytest.approx(4.0)


def test_overflow_refused_with_the_exact_limits_to_change() -> None:
    with pytest.raises(
        ConfigurationError, match=r"lower bits to at most 30, or max_summands to at most 2\b"
    ):
        FixedPointCodec(clip=1.0, bits=31, max_summands=4)
    with pytest.raises(
        ConfigurationError, match=r"lower bits to at most 25, or max_summands to at most 64\b"
    ):
        FixedPointCodec(clip=1.0, bits=26, max_summands=100)
    # The limits it names do work.
    FixedPointCodec(clip=1.0, bits=25, max_summands=100)
    FixedPointCodec(clip=1.0, bits=26, max_summands=64)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"clip": 0.0, "bits": 8, "max_summands": 2}, "clip"),
        ({"clip": float("nan"), "bits": 8, "max_summands": 2}, "clip"),
        ({"clip": 1.0, "bits": 0, "max_summands": 2}, "bits"),
        ({"clip": 1.0, "bits": 33, "max_summands": 1}, "bits"),
        ({"clip": 1.0, "bits": 8, "max_summands": 0}, "max_summands"),
    ],
)
def test_bad_parameters_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        FixedPointCodec(**kwargs)


def test_encode_refuses_bad_vectors() -> None:
    codec = FixedPointCodec(clip=1.0, bits=8, max_summands=2)
    with pytest.raises(MalformedInput, match="index 2"):
        codec.encode(np.array([0.0, 1.0, np.nan]))
    with pytest.raises(MalformedInput, match="1-D"):
        codec.encode(np.zeros((2, 2)))


def test_decode_refuses_impossible_sums() -> None:
    codec = FixedPointCodec(clip=1.0, bits=8, max_summands=3)
    with pytest.raises(MalformedInput, match="exceeds 2 x 255"):
        codec.decode_sum(np.array([511], dtype=np.uint32), 2)
    with pytest.raises(MalformedInput, match="summands must be in 1..3"):
        codec.decode_sum(np.array([1], dtype=np.uint32), 4)
    with pytest.raises(MalformedInput, match="uint32"):
        codec.decode_sum(np.array([1], dtype=np.int64), 1)


def test_json_round_trip_and_strict_parsing() -> None:
    codec = FixedPointCodec(clip=0.5, bits=12, max_summands=100)
    assert FixedPointCodec.from_json(codec.to_json()) == codec
    with pytest.raises(MalformedInput, match="'bits' must be an integer"):
        FixedPointCodec.from_json({"clip": 0.5, "bits": 12.5, "max_summands": 100})
    with pytest.raises(MalformedInput, match="missing"):
        FixedPointCodec.from_json({"clip": 0.5, "bits": 12})
    with pytest.raises(ConfigurationError):
        FixedPointCodec.from_json({"clip": 0.5, "bits": 31, "max_summands": 100})


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 12), st.integers(1, 30), st.integers(0, 2**32 - 1))
def test_the_ring_codec_sums_signed_integers_exactly_through_wraparound(clients: int, length: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    bound = (2**31 - 1) // clients  # the plan keeps the true sum within the signed range
    vectors = rng.integers(-bound, bound + 1, size=(clients, length))
    codec = IntegerRingCodec(max_summands=clients)
    words = sum((codec.encode(v.astype(np.float64)).astype(np.uint64) for v in vectors), np.zeros(length, np.uint64))
    total = (words % 2**32).astype(np.uint32)  # the masking sum: modulo 2^32
    np.testing.assert_array_equal(codec.decode_sum(total, clients), vectors.sum(axis=0).astype(np.float64))
    assert codec_from_json(codec.to_json()) == codec and codec.step == 0.0


def test_the_ring_codec_refuses_what_is_not_a_signed_32_bit_integer() -> None:
    codec = IntegerRingCodec(max_summands=3)
    for bad in ([0.5], [2.0**31], [-(2.0**31) - 1], [float("nan")]):
        with pytest.raises(MalformedInput, match="not a signed 32-bit integer"):
            codec.encode(np.asarray(bad))
    with pytest.raises(MalformedInput, match="summands must be in 1..3"):
        codec.decode_sum(np.zeros(2, np.uint32), 4)
    with pytest.raises(MalformedInput, match="exactly kind and max_summands"):
        codec_from_json({"kind": "integer_ring", "max_summands": 3, "clip": 1.0})
    with pytest.raises(ConfigurationError):
        codec_from_json({"kind": "integer_ring", "max_summands": 0})
