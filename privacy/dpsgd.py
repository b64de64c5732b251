"""Local DP-SGD with Opacus, with the noise multiplier given explicitly and secret randomness.

Opacus computes the per-sample gradients (``GradSampleModule``), clips them and feeds its
own accountant; the randomness that makes the run private, which records enter each
batch (Poisson sampling with rate q) and the Gaussian noise added to the clipped sum, comes
from :class:`~bfl_private.privacy.secure_random.SecureRandom`, a fresh AES-256-CTR
keystream under 256 bits from the OS, one per call. There is no seed: two calls on the same
inputs give different models, and nothing the federation publishes (``--seed``, the
ledger) lets anyone rebuild the noise. Opacus's ``secure_mode`` would do the same through
``torchcsprng``, which does not exist for this torch.

σ is never calibrated by ``make_private_with_epsilon`` (whose calibration assumes
q = 1/len(dataloader) and ``int(epochs/q)`` steps); the record written describes exactly
the mechanism that ran, and Opacus's accountant, fed by the optimizer's step hook, must
have seen the same (σ, q, steps), which is checked after training.

Honest limit: a ledger can prove the declared parameters, not that the noise was drawn.
"""
from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from opacus.accountants import IAccountant, create_accountant
from opacus.grad_sample.utils import prepare_module
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from opacus.validators import ModuleValidator
from torch import nn

from .accounting import DEFAULT_DELTA, DEFAULT_RELATION, PrivacyRecord
from .errors import ConfigurationError, PrivacyError
from .secure_random import SecureRandom

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


class SecureNoiseDPOptimizer(DPOptimizer):
    """Opacus's DP optimizer with the Gaussian noise drawn from a :class:`SecureRandom`."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, random: SecureRandom, **kwargs) -> None:
        super().__init__(optimizer, **kwargs)
        self.random = random

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = self.random.gaussian_noise(tuple(p.summed_grad.shape), std=std)
            p.grad = (p.summed_grad + torch.from_numpy(noise).to(p.summed_grad.dtype)).view_as(p)
            _mark_as_processed(p.summed_grad)


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
    delta: float = DEFAULT_DELTA,
    optimizer: str = "sgd",
    momentum: float = 0.0,
    grad_sample_mode: str = DEFAULT_GRAD_SAMPLE_MODE,
    accountant: str = "pld",
    value_discretization_interval: float | None = None,
    neighboring_relation: str = DEFAULT_RELATION,
    opacus_accountant: str = "prv",
) -> DPTrainingResult:
    """Train a copy of ``model`` for ``steps`` DP-SGD steps on (``features``, ``labels``).

    Cross-entropy loss, mean reduction over the expected batch size n·q (public: n is the
    client's registered weight), flat per-sample clipping at ``clipping_norm``, Gaussian
    noise of std ``noise_multiplier · clipping_norm`` on the summed clipped gradients,
    batches Poisson-sampled with rate ``sample_rate``: sampling and noise from a fresh
    :class:`SecureRandom`. The returned record describes exactly this run; its ε is what
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
        neighboring_relation=neighboring_relation,
    )
    n = x.shape[0]
    expected_batch_size = int(n * sample_rate)
    if expected_batch_size < 1:
        raise ConfigurationError(f"expected batch size n·q = {n}·{sample_rate:g} < 1; raise the sample rate")

    random = SecureRandom()
    local = copy.deepcopy(model)
    local.train()
    inputs = torch.from_numpy(x.astype(np.float32))
    targets = torch.from_numpy(y.astype(np.int64))
    opacus_history = create_accountant(opacus_accountant)
    with warnings.catch_warnings():
        # torch warns that the full backward hooks fire on inputs without gradients (by design).
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        ModuleValidator.validate(local, strict=True)
        dp_model = prepare_module(local, grad_sample_mode, batch_first=True, loss_reduction="mean")
        dp_optimizer = SecureNoiseDPOptimizer(
            _optimizer(optimizer, local.parameters(), learning_rate, momentum),
            random=random,
            noise_multiplier=noise_multiplier,
            max_grad_norm=clipping_norm,
            expected_batch_size=expected_batch_size,
            loss_reduction="mean",
        )
        dp_optimizer.attach_step_hook(opacus_history.get_optimizer_hook_fn(sample_rate=sample_rate))
        loss_fn = nn.CrossEntropyLoss()
        losses: list[float] = []
        for _ in range(steps):
            batch = torch.from_numpy(np.flatnonzero(random.bernoulli(n, sample_rate)))
            dp_optimizer.zero_grad(set_to_none=True)
            output = dp_model(inputs[batch])
            # An empty Poisson batch still takes a step: the update is pure noise.
            loss = loss_fn(output, targets[batch]) if batch.numel() else output.sum()
            loss.backward()
            dp_optimizer.step()
            losses.append(float(loss.detach()) if batch.numel() else math.nan)
    dp_model.remove_hooks()
    for p in local.parameters():
        p.grad_sample = None
        p.grad = None

    history = list(opacus_history.history)
    if history != [(noise_multiplier, sample_rate, steps)]:
        raise PrivacyError(f"Opacus accounted {history}, but the record says {[(noise_multiplier, sample_rate, steps)]}")
    finite = [v for v in losses if math.isfinite(v)]
    return DPTrainingResult(
        model=local,
        record=record,
        mean_loss=float(np.mean(finite)) if finite else math.nan,
        opacus_accountant=opacus_history,
    )
