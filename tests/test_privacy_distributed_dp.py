"""The participant's step of distributed DP: rounding, Skellam shares, the ring, the modulus."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from bfl_private.models import build_model
from bfl_private.privacy.distributed_dp import (
    conditional_round,
    fresh_generator,
    noisy_gradient_share,
    per_record_gradients,
    skellam_share,
)
from bfl_private.privacy.errors import ConfigurationError, PrivacyError
from bfl_private.privacy.skellam import ShareParameters, grid_scale
from bfl_private.protocols.masking import secure_sum
from bfl_private.protocols.quantize import IntegerRingCodec


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(-50, 50), min_size=1, max_size=40), st.floats(0.05, 0.9))
def test_conditional_rounding_respects_its_bound(values: list[float], beta: float) -> None:
    x = np.asarray([values])
    norm = float(np.linalg.norm(x))
    bound = math.sqrt(norm**2 + x.size / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(x.size) / 2))
    rounded = conditional_round(x, bound=bound, rng=fresh_generator())
    assert rounded.dtype == np.int64 and np.linalg.norm(rounded) <= bound + 1e-9
    assert np.all(np.abs(rounded - x) < 1)


def test_rounding_is_unbiased_when_the_bound_is_loose() -> None:
    x = np.full((20000, 3), [0.25, -1.5, 2.75])
    rounded = conditional_round(x, bound=1e9, rng=fresh_generator())
    np.testing.assert_allclose(rounded.mean(axis=0), [0.25, -1.5, 2.75], atol=0.02)


def test_a_bound_rounding_cannot_meet_is_named() -> None:
    with pytest.raises(PrivacyError, match="conditional rounding failed"):
        conditional_round(np.full((1, 4), 1.5), bound=1.0, rng=fresh_generator())


def test_skellam_shares_have_the_planned_variance_and_sum_to_skellam() -> None:
    rng = fresh_generator()
    shares = sum(skellam_share(200_000, 12.5, rng) for _ in range(8))  # 8 shares: Sk of variance 100
    assert abs(shares.mean()) < 0.1 and shares.var() == pytest.approx(100, rel=0.02)
    support = np.arange(-40, 41)
    observed = np.array([(shares == k).mean() for k in support])
    assert np.max(np.abs(observed - stats.skellam.pmf(support, 50, 50))) < 0.003


def test_the_ring_round_trips_signed_sums_through_secure_aggregation() -> None:
    rng = np.random.default_rng(0)
    parts = [rng.integers(-2**27, 2**27, 50) for _ in range(5)]
    codec = IntegerRingCodec(max_summands=len(parts))
    result = secure_sum([codec.encode(p.astype(np.float64)) for p in parts], neighbours=None)
    np.testing.assert_array_equal(codec.decode_sum(result.total, len(parts)), np.sum(parts, axis=0))


def test_the_modulus_check_refuses_a_grid_that_could_wrap() -> None:
    params = ShareParameters(scale=grid_scale(records=400, clipping_norm=1.0), clipping_norm=1.0,
                             beta=math.exp(-0.5), sample_rate=1.0, share_variance=1e12)
    params.check_modulus(dim=62, records=400, participants=10)
    with pytest.raises(ConfigurationError, match="signed 32-bit"):
        ShareParameters(scale=2.0**24, clipping_norm=1.0, beta=0.5, sample_rate=1.0,
                        share_variance=1.0).check_modulus(dim=62, records=400, participants=10)


def test_per_record_gradients_match_autograd_one_by_one() -> None:
    model = build_model("logreg", 5, 2, seed=0)
    x, y = torch.randn(7, 5), torch.randint(0, 2, (7,))
    grads = per_record_gradients(model, x, y)
    for i in range(7):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i:i + 1]), y[i:i + 1]).backward()
        expected = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
        np.testing.assert_allclose(grads[i], expected, rtol=1e-5, atol=1e-7)


def test_a_share_is_the_clipped_scaled_sum_plus_noise_in_expectation() -> None:
    model = build_model("logreg", 4, 2, seed=1)
    rng = np.random.default_rng(2)
    features, labels = rng.normal(size=(30, 4)).astype(np.float32), rng.integers(0, 2, 30)
    params = ShareParameters(scale=256.0, clipping_norm=0.5, beta=math.exp(-0.5), sample_rate=1.0, share_variance=4.0)
    grads = per_record_gradients(model, torch.from_numpy(features), torch.from_numpy(labels))
    clipped = grads * np.minimum(1.0, 0.5 / np.linalg.norm(grads, axis=1, keepdims=True))
    draws = np.stack([noisy_gradient_share(model, features, labels, params) for _ in range(300)])
    assert draws.dtype == np.int64
    np.testing.assert_allclose(draws.mean(axis=0), 256.0 * clipped.sum(axis=0), atol=4 * math.sqrt(4.0 + 30) / math.sqrt(300) + 1)


def test_share_parameters_round_trip_and_refuse_garbage() -> None:
    params = ShareParameters(scale=64.0, clipping_norm=1.0, beta=0.5, sample_rate=0.5, share_variance=9.0)
    assert ShareParameters.from_json(params.to_json(), where="test") == params
    with pytest.raises(PrivacyError, match="test: distributed-DP share parameters"):
        ShareParameters.from_json({**params.to_json(), "extra": 1}, where="test")
    with pytest.raises(PrivacyError, match="share_variance"):
        ShareParameters.from_json({**params.to_json(), "share_variance": -1}, where="test")
