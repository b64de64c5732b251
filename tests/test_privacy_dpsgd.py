"""DP-SGD with Opacus: the record matches what Opacus accounted, clipping holds, inputs are checked."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from bfl_private.models import build_model, flatten_parameters
from bfl_private.privacy.accounting import cumulative_epsilon
from bfl_private.privacy.dpsgd import train_dp
from bfl_private.privacy.errors import ConfigurationError, MalformedPrivacyRecord
from bfl_private.privacy.planner import plan_noise_multiplier

DELTA = 1e-5


def separable(n: int = 60, d: int = 5, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x, (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)


@pytest.mark.parametrize("kind", ["logreg", "mlp"])
def test_training_with_planned_sigma_matches_opacus_accountant(kind: str) -> None:
    x, y = separable()
    q = 0.2
    sigma = plan_noise_multiplier(target_epsilon=2.0, delta=DELTA, sample_rate=q, steps_per_round=40, rounds=1)
    result = train_dp(
        build_model(kind, 5, 2), x, y, noise_multiplier=sigma, clipping_norm=1.0, sample_rate=q, steps=40,
        learning_rate=0.5, delta=DELTA,
    )
    assert (result.record.noise_multiplier, result.record.sample_rate, result.record.steps) == (sigma, q, 40)
    assert result.opacus_accountant.history == [(sigma, q, 40)]
    ours = cumulative_epsilon([result.record], delta=DELTA)
    assert ours <= 2.0
    assert result.opacus_accountant.get_epsilon(DELTA) == pytest.approx(ours, rel=0.02)


def test_dp_sgd_learns_and_never_repeats_its_noise() -> None:
    x, y = separable(n=200)
    model = build_model("logreg", 5, 2)
    before = flatten_parameters(model)
    kwargs = dict(noise_multiplier=0.8, clipping_norm=1.0, sample_rate=0.2, steps=100, learning_rate=0.5)
    runs = []
    for _ in range(2):
        # Every public or global seed reset to the same value: the runs must still differ,
        # since sampling and noise come from fresh OS randomness and from nothing else.
        torch.manual_seed(0)
        np.random.seed(0)
        runs.append(train_dp(model, x, y, **kwargs))
    first, again = runs
    np.testing.assert_array_equal(flatten_parameters(model), before)  # the caller's model is untouched
    assert not np.array_equal(flatten_parameters(first.model), flatten_parameters(again.model))
    with torch.no_grad():
        accuracy = (first.model(torch.from_numpy(x)).argmax(1).numpy() == y).mean()
    assert accuracy > 0.9
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in first.model.parameters())


def test_noise_has_the_planned_scale() -> None:
    # One full-batch SGD step with a huge σ: the step is lr·(clipped sum + N(0, (σC)²))/n,
    # and with d + 1 parameters and a clipped sum of norm <= n the noise dominates.
    n, d, sigma, clip, lr = 32, 2000, 1000.0, 1.0, 1e-3
    x, y = separable(n=n, d=d)
    model = build_model("logreg", d, 2)
    result = train_dp(model, x, y, noise_multiplier=sigma, clipping_norm=clip, sample_rate=1.0, steps=1,
                      learning_rate=lr, optimizer="sgd")
    noise = (flatten_parameters(model) - flatten_parameters(result.model)) * n / lr
    assert noise.size > d
    assert abs(noise.mean()) < 5 * sigma * clip / np.sqrt(noise.size)  # five standard errors
    assert noise.std() == pytest.approx(sigma * clip, rel=0.1)


def test_per_sample_clipping_bounds_the_update() -> None:
    # Full batch (q = 1), negligible noise: one SGD step moves the parameters by
    # lr · mean of clipped per-sample gradients, whose norm is at most lr · C.
    x, y = separable(n=32)
    x = x * 100.0  # huge per-sample gradients, so clipping is active
    model = build_model("logreg", 5, 2)
    before = flatten_parameters(model)
    lr, clip = 0.1, 0.5
    result = train_dp(model, x, y, noise_multiplier=1e-9, clipping_norm=clip, sample_rate=1.0, steps=1, learning_rate=lr)
    moved = np.linalg.norm(flatten_parameters(result.model) - before)
    assert 0 < moved <= lr * clip * (1 + 1e-5)
    plain = build_model("logreg", 5, 2)
    torch.nn.CrossEntropyLoss()(plain(torch.from_numpy(x)), torch.from_numpy(y)).backward()
    unclipped = float(torch.sqrt(sum((p.grad**2).sum() for p in plain.parameters())))
    assert lr * unclipped > 10 * moved


def test_empty_poisson_batches_still_take_noisy_steps() -> None:
    x, y = separable(n=20)
    result = train_dp(build_model("mlp", 5, 2), x, y, noise_multiplier=1.0, clipping_norm=1.0, sample_rate=1 / 20, steps=60, learning_rate=0.1)
    assert result.opacus_accountant.history == [(1.0, 1 / 20, 60)]
    assert np.isfinite(result.mean_loss)


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"sample_rate": 1 / 80}, ConfigurationError, r"expected batch size n·q = 60·0.0125 < 1"),
        ({"grad_sample_mode": "ew"}, ConfigurationError, "grad_sample_mode must be one of"),
        ({"optimizer": "lbfgs"}, ConfigurationError, "optimizer must be one of"),
        ({"optimizer": "adam", "momentum": 0.9}, ConfigurationError, "momentum applies to optimizer='sgd' only"),
        ({"learning_rate": float("nan")}, ConfigurationError, "need learning_rate > 0"),
        ({"noise_multiplier": 0.0}, MalformedPrivacyRecord, "noise_multiplier must be > 0"),
        ({"steps": 0}, MalformedPrivacyRecord, "steps must be an integer >= 1"),
        ({"delta": 2.0}, MalformedPrivacyRecord, "delta must be a number in"),
    ],
)
def test_bad_arguments_are_refused_before_training(change, error, message) -> None:
    x, y = separable()
    kwargs = dict(noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.2, steps=5, learning_rate=0.1)
    with pytest.raises(error, match=message):
        train_dp(build_model("logreg", 5, 2), x, y, **{**kwargs, **change})


def test_bad_data_is_refused() -> None:
    x, y = separable()
    kwargs = dict(noise_multiplier=1.0, clipping_norm=1.0, sample_rate=0.2, steps=5, learning_rate=0.1)
    with pytest.raises(ConfigurationError, match=r"features must be \(n, d\)"):
        train_dp(build_model("logreg", 5, 2), x, y[:-1], **kwargs)
    with pytest.raises(ConfigurationError, match="labels must be non-negative integers"):
        train_dp(build_model("logreg", 5, 2), x, y.astype(np.float32), **kwargs)
    x[3, 2] = np.nan
    with pytest.raises(ConfigurationError, match="NaN or infinity"):
        train_dp(build_model("logreg", 5, 2), x, y, **kwargs)
