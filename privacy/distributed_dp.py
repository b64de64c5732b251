"""Distributed DP: each participant adds a share of integer Skellam noise inside the sum.

One round of the distributed mechanism, as in Agarwal, Kairouz and Liu (NeurIPS 2021) and
Kairouz, Liu and Steinke (ICML 2021), on one participant's machine:

1. Poisson-sample its records with rate q;
2. compute each sampled record's loss gradient at the global model and clip it to l2 norm C;
3. scale it by the grid ``scale`` and round it to integers by conditional randomised
   rounding (unbiased coordinate-wise rounding, redrawn until the rounded vector's norm is
   within :func:`~.skellam.rounded_l2_bound`, which bounds one record's influence);
4. sum the integers and add a Skellam share of variance ``share_variance``.

The shares of the N - t participants that are honest and present sum to Skellam noise of
variance (N - t) * share_variance >= the planned total, whatever t others do; secure
aggregation sums the integer vectors modulo 2^32 so the aggregator sees only the total.
The aggregator's decoding (the ring codec,
:class:`~bfl_private.protocols.quantize.IntegerRingCodec`) and the server optimiser act on
that noisy sum: post-processing. The accounting is :mod:`.skellam`.

Randomness: sampling, rounding and noise all come from a numpy ``Generator`` over
randomgen's ``AESCounter`` (AES-128 in counter mode, AES-NI) keyed with 128 fresh bits from
the OS per call and never stored, so nothing public replays them (as
:mod:`.secure_random` does for local DP-SGD).
"""
from __future__ import annotations

import os

import numpy as np
import torch
from randomgen import AESCounter
from torch import nn
from torch.func import functional_call, grad, vmap

from .errors import PrivacyError
from .skellam import ShareParameters

_MAX_ROUNDING_TRIES = 1000


def fresh_generator() -> np.random.Generator:
    """A Generator over AES-128-CTR keyed with 128 fresh OS bits (never recorded)."""
    return np.random.Generator(AESCounter(key=int.from_bytes(os.urandom(16), "big")))


def per_record_gradients(model: nn.Module, features: torch.Tensor, labels: torch.Tensor) -> np.ndarray:
    """Each record's cross-entropy gradient at ``model``'s parameters, flattened: (records, dim)."""
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, p, (x.unsqueeze(0),))
        return nn.functional.cross_entropy(out, y.unsqueeze(0))

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, features, labels)
    return torch.cat([grads[name].reshape(features.shape[0], -1) for name, _ in model.named_parameters()],
                     dim=1).double().numpy()


def conditional_round(scaled: np.ndarray, *, bound: float, rng: np.random.Generator) -> np.ndarray:
    """Unbiased randomised rounding of each row to integers, each row redrawn until its l2
    norm is at most ``bound`` (Kairouz et al. 2021, conditional randomised rounding)."""
    low = np.floor(scaled)
    fraction = scaled - low
    out = np.empty(scaled.shape, dtype=np.int64)
    pending = np.arange(scaled.shape[0])
    for _ in range(_MAX_ROUNDING_TRIES):
        if pending.size == 0:
            return out
        draw = low[pending] + (rng.random(fraction[pending].shape) < fraction[pending])
        ok = np.einsum("ij,ij->i", draw, draw) <= bound * bound
        out[pending[ok]] = draw[ok].astype(np.int64)
        pending = pending[~ok]
    raise PrivacyError(f"conditional rounding failed {_MAX_ROUNDING_TRIES} times: bound {bound:g} is too tight")


def skellam_share(dim: int, variance: float, rng: np.random.Generator) -> np.ndarray:
    """Symmetric Skellam noise of ``variance`` per coordinate: Poisson(v/2) - Poisson(v/2)."""
    return rng.poisson(variance / 2, dim).astype(np.int64) - rng.poisson(variance / 2, dim).astype(np.int64)


def noisy_gradient_share(model: nn.Module, features: np.ndarray, labels: np.ndarray,
                         parameters: ShareParameters) -> np.ndarray:
    """One participant's contribution to a distributed-DP round: the integer sum of its
    Poisson-sampled, clipped, rounded per-record gradients plus its Skellam share (int64)."""
    rng = fresh_generator()
    dim = sum(p.numel() for p in model.parameters())
    sampled = np.flatnonzero(rng.random(len(labels)) < parameters.sample_rate)
    total = np.zeros(dim, dtype=np.int64)
    if sampled.size:
        grads = per_record_gradients(model, torch.from_numpy(features[sampled]), torch.from_numpy(labels[sampled]))
        norms = np.linalg.norm(grads, axis=1, keepdims=True)
        clipped = grads * np.minimum(1.0, parameters.clipping_norm / np.maximum(norms, 1e-12))
        rounded = conditional_round(clipped * parameters.scale, bound=parameters.rounded_bound(dim), rng=rng)
        total += rounded.sum(axis=0)
    return total + skellam_share(dim, parameters.share_variance, rng)

