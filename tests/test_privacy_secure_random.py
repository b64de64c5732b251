"""The CSPRNG behind DP-SGD's sampling and noise: right distributions, a fresh key each time."""
from __future__ import annotations

import numpy as np


def test_secure_random_draws_are_uniform_gaussian_and_never_repeat() -> None:
    from scipy import stats

    from bfl_private.privacy.secure_random import SecureRandom

    a, b = SecureRandom(), SecureRandom()
    assert not np.array_equal(a.uniform(64), b.uniform(64))  # a fresh OS key each
    u = a.uniform(100_000)
    assert 0 < u.min() and u.max() < 1 and stats.kstest(u, "uniform").pvalue > 1e-4
    z = a.gaussian_noise((50_000,), std=3.0)
    assert stats.kstest(z / 3.0, "norm").pvalue > 1e-4
    coins = a.bernoulli(200_000, 0.25)
    assert abs(coins.mean() - 0.25) < 5 * np.sqrt(0.25 * 0.75 / 200_000)
