"""Local DP-SGD with Opacus, with the noise multiplier given explicitly.

``PrivacyEngine.make_private`` is called with the planned σ (never
``make_private_with_epsilon``, whose calibration assumes q = 1/len(dataloader) and
``int(epochs/q)`` steps). Batches are Poisson-sampled by Opacus's ``DPDataLoader``, so
the add/remove-one analysis of the subsampled Gaussian holds. Opacus derives the sample
rate it accounts for as 1/len(data_loader), which is 1/k for an integer k; the sample
rate here must therefore be of that form (:func:`sample_rate_for` gives the one Opacus
would derive from a batch size), so that the :class:`PrivacyRecord` written and the
Opacus accountant's own history describe the same mechanism, which is checked after
training.

Honest limit: Opacus's ``secure_mode`` needs ``torchcsprng``; without it the noise comes
from torch's Mersenne Twister, seeded here for reproducibility. A ledger can prove the
declared parameters, not that the noise was drawn.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.accountants import IAccountant
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.utils.data import TensorDataset

from .accounting import DEFAULT_DELTA, PrivacyRecord
from .errors import ConfigurationError, PrivacyError

OPTIMIZERS = ("sgd", "adam")
GRAD_SAMPLE_MODES = ("hooks", "functorch")
"""Opacus's expanded-weights mode ("ew") is excluded: torch's ``call_for_per_sample_grads``
refuses a batch of size 0, which Poisson sampling produces, and skipping that step would
break the accounting (an empty batch must still release pure noise)."""
DEFAULT_GRAD_SAMPLE_MODE = "hooks"
"""Fastest correct mode for the Linear/Tanh models in ``bfl_private.models``, measured in
``bench/bench_dpsgd.py``: hooks compute a Linear layer's per-sample gradients with one
einsum; functorch's vmap took 1.7-2.1x as long per epoch on these tiny batches, and
ghost clipping (two backward passes) about 2.3x per step."""


def sample_rate_for(n_records: int, *, batch_size: int) -> float:
    """The Poisson sample rate Opacus derives for ``batch_size``: 1/ceil(n/batch_size)."""
    if n_records < 1 or batch_size < 1:
        raise ConfigurationError(f"need n_records >= 1 and batch_size >= 1, got {n_records}, {batch_size}")
    rate = 1.0 / math.ceil(n_records / batch_size)
    check_opacus_sample_rate(rate)
    return rate


def check_opacus_sample_rate(sample_rate: float) -> None:
    """Refuse a q that Opacus would account differently from how it samples.

    ``DPDataLoader`` samples each record with probability q, runs int(1/q) batches per
    pass, and ``make_private`` accounts q' = 1/int(1/q). The two agree only when q is
    exactly 1/k; for some k (93, 99, ...) 1/(1/k) rounds below k and they would not.
    """
    if not 0 < sample_rate <= 1 or sample_rate != 1.0 / int(1.0 / sample_rate):
        raise ConfigurationError(
            f"sample_rate {sample_rate!r} is not one Opacus accounts exactly (1/k with int(1/q) == k); "
            f"choose another batch size"
        )


@dataclass(frozen=True)
class DPTrainingResult:
    """What one call of :func:`train_dp` produced."""

    model: nn.Module
    """The trained model, unwrapped from Opacus, hooks removed (a copy; the input is untouched)."""
    record: PrivacyRecord
    """The mechanism that actually ran: σ, q, steps, C, δ and the accountant to recompute ε."""
    mean_loss: float
    """Mean training loss over the steps (on the sampled batches, before noise)."""
    opacus_accountant: IAccountant
    """Opacus's own accountant, fed by the optimizer's step hook: an independent view of the run."""


def _optimizer(name: str, params, learning_rate: float, momentum: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=learning_rate, momentum=momentum)
    return torch.optim.Adam(params, lr=learning_rate)


def train_dp(
    model: nn.Module,
    features: np.ndarray,
    labels: np.ndarray,
    *,
    noise_multiplier: float,
    clipping_norm: float,
    sample_rate: float,
    steps: int,
    learning_rate: float,
    seed: int,
    delta: float = DEFAULT_DELTA,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    accountant: str = "pld",
    value_discretization_interval: float | None = None,
    opacus_accountant: str = "prv",
) -> DPTrainingResult:
    """Train a copy of ``model`` for ``steps`` DP-SGD steps on (``features``, ``labels``).

    Cross-entropy loss, mean reduction, flat per-sample clipping at ``clipping_norm``,
    Gaussian noise of std ``noise_multiplier · clipping_norm`` on the summed clipped
    gradients. The returned record describes exactly this run; its ε is what
    :func:`~bfl_private.privacy.accounting.cumulative_epsilon` computes from it.
    """
    x = np.asarray(features)
    y = np.asarray(labels)
    if x.ndim != 2 or y.ndim != 1 or x.shape[0] != y.shape[0]:
        raise ConfigurationError(f"features must be (n, d) and labels (n,), got {x.shape} and {y.shape}")
    if not np.all(np.isfinite(x)):
        raise ConfigurationError("features contain NaN or infinity")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ConfigurationError(f"labels must be non-negative integers, got dtype {y.dtype}")
    if optimizer not in OPTIMIZERS:
        raise ConfigurationError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if grad_sample_mode not in GRAD_SAMPLE_MODES:
        raise ConfigurationError(f"grad_sample_mode must be one of {', '.join(GRAD_SAMPLE_MODES)}, got {grad_sample_mode!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0) or not 0 <= momentum < 1:
        raise ConfigurationError(f"need learning_rate > 0 and 0 <= momentum < 1, got {learning_rate!r}, {momentum!r}")
    if optimizer == "adam" and momentum:
        raise ConfigurationError("momentum applies to optimizer='sgd' only (Adam keeps its own moments)")
    # The record validates σ, q, steps, C, δ and the accountant before any training.
    record = PrivacyRecord(
        noise_multiplier=noise_multiplier,
        sample_rate=sample_rate,
        steps=steps,
        clipping_norm=clipping_norm,
        delta=delta,
        accountant=accountant,
        value_discretization_interval=value_discretization_interval,
    )
    n = x.shape[0]
    check_opacus_sample_rate(sample_rate)
    if n * sample_rate < 1:
        raise ConfigurationError(f"expected batch size n·q = {n}·{sample_rate:g} < 1; raise the sample rate")

    local = copy.deepcopy(model)
    local.train()
    dataset = TensorDataset(torch.from_numpy(x.astype(np.float32)), torch.from_numpy(y.astype(np.int64)))
    loader = DPDataLoader(dataset, sample_rate=sample_rate, generator=torch.Generator().manual_seed(seed))
    with warnings.catch_warnings():
        # Opacus warns that secure_mode is off (the module docstring states that limit) and
        # torch that the full backward hooks fire on inputs without gradients (by design).
        warnings.filterwarnings("ignore", message="Secure RNG turned off")
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        engine = PrivacyEngine(accountant=opacus_accountant)
        dp_model, dp_optimizer, dp_loader = engine.make_private(
            module=local,
            optimizer=_optimizer(optimizer, local.parameters(), learning_rate, momentum),
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clipping_norm,
            poisson_sampling=False,  # the loader already samples each record with probability q
            grad_sample_mode=grad_sample_mode,
            noise_generator=torch.Generator().manual_seed(seed + 0x9E3779B9),
        )
        # Iterate Opacus's Poisson batch sampler directly and index the tensors once per batch:
        # the same sampling as iterating dp_loader, without per-record fetching and collation,
        # which dominate the step time of these small models.
        sampler = dp_loader.batch_sampler
        inputs, targets = dataset.tensors
        loss_fn = nn.CrossEntropyLoss()
        losses: list[float] = []
        while len(losses) < steps:
            for indices in sampler:
                batch = torch.as_tensor(indices, dtype=torch.long)
                dp_optimizer.zero_grad(set_to_none=True)
                output = dp_model(inputs[batch])
                # An empty Poisson batch still takes a step: the update is pure noise.
                loss = loss_fn(output, targets[batch]) if batch.numel() else output.sum()
                loss.backward()
                dp_optimizer.step()
                losses.append(float(loss.detach()) if batch.numel() else math.nan)
                if len(losses) == steps:
                    break
    dp_model.remove_hooks()
    for p in local.parameters():
        p.grad_sample = None
        p.grad = None

    history = list(engine.accountant.history)
    if history != [(noise_multiplier, sample_rate, steps)]:
        raise PrivacyError(f"Opacus accounted {history}, but the record says {[(noise_multiplier, sample_rate, steps)]}")
    finite = [v for v in losses if math.isfinite(v)]
    return DPTrainingResult(
        model=local,
        record=record,
        mean_loss=float(np.mean(finite)) if finite else math.nan,
        opacus_accountant=engine.accountant,
    )
