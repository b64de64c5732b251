"""A hospital's local computation: training, DP-SGD, the distributed-DP share, accuracy.

The round engine (:class:`~bfl_private.rounds.engine.RoundEngine`) and the hospital
side (:class:`~bfl_private.rounds.hospital.Hospital`) call these; the FedAvg arithmetic
itself lives in :mod:`bfl_private.fedavg`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .data import ClientData, Split
from .distributed_round import DistributedPlan
from .models import build_model, flatten_parameters, load_flat
from .privacy.accounting import PrivacyRecord
from .settings import PrivacySettings, TrainingConfig


@dataclass(frozen=True)
class LocalUpdate:
    """What one client produced in one round, before protection."""

    client_id: str
    delta: np.ndarray
    """New local parameters minus the global parameters (float32)."""
    records: int
    privacy: PrivacyRecord | None = None
    """The privacy record of the DP training that produced ``delta`` (None when non-private)."""


def accuracy(model_kind: str, params: np.ndarray, split: Split, *, n_features: int, n_classes: int) -> float:
    """Fraction of ``split`` that the model with flat ``params`` classifies correctly."""
    model = build_model(model_kind, n_features, n_classes)
    load_flat(model, params)
    with torch.no_grad():
        predicted = model(torch.from_numpy(split.features)).argmax(dim=1).numpy()
    return float(np.mean(predicted == split.labels))


def _local_training(model: nn.Module, split: Split, config: TrainingConfig, generator: torch.Generator) -> None:
    features = torch.from_numpy(split.features)
    labels = torch.from_numpy(split.labels)
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.SGD
    optimiser = optimizer_class(model.parameters(), lr=config.learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(config.local_steps):
        batch = torch.randint(len(split), (min(config.batch_size, len(split)),), generator=generator)
        optimiser.zero_grad()
        loss_fn(model(features[batch]), labels[batch]).backward()
        optimiser.step()


class Client:
    """One data holder: trains on its own records and hands back only an update."""

    def __init__(self, data: ClientData, *, n_features: int, n_classes: int) -> None:
        self.data = data
        self.n_features = n_features
        self.n_classes = n_classes

    @property
    def client_id(self) -> str:
        return self.data.client_id

    @property
    def records(self) -> int:
        """Training records: the client's FedAvg weight and the n of its δ < 1/n rule."""
        return len(self.data.train)

    def train(self, global_params: np.ndarray, config: TrainingConfig, *, seed: int) -> LocalUpdate:
        """Non-private local training (the config's optimizer) from the global model."""
        model = build_model(config.model, self.n_features, self.n_classes)
        load_flat(model, global_params)
        generator = torch.Generator().manual_seed(seed)
        _local_training(model, self.data.train, config, generator)
        return LocalUpdate(self.client_id, flatten_parameters(model) - global_params, self.records)


def train_private(
    client: Client,
    global_params: np.ndarray,
    config: TrainingConfig,
    privacy: PrivacySettings,
    *,
    noise_multiplier: float,
    sample_rate: float,
) -> LocalUpdate:
    """DP-SGD local training (Opacus, Poisson sampling, the planned σ) from the global model.

    Sampling and noise come from fresh OS randomness inside :func:`train_dp`: there is no
    seed to pass, so nothing public can reproduce them."""
    from .privacy.dpsgd import train_dp

    model = build_model(config.model, client.n_features, client.n_classes)
    load_flat(model, global_params)
    result = train_dp(
        model, client.data.train.features, client.data.train.labels,
        noise_multiplier=noise_multiplier, clipping_norm=privacy.clipping_norm, sample_rate=sample_rate,
        steps=config.local_steps, learning_rate=config.learning_rate, optimizer=config.optimizer,
        delta=privacy.delta, accountant=privacy.accountant, neighboring_relation=privacy.neighboring_relation,
    )
    return LocalUpdate(client.client_id, flatten_parameters(result.model) - global_params, client.records, result.record)


def distributed_share(client: Client, global_params: np.ndarray, config: TrainingConfig,
                      plan: DistributedPlan) -> LocalUpdate:
    """A participant's input to a distributed-DP round: its Poisson-sampled, clipped, rounded
    per-record gradient sum at the global model plus its Skellam share, as an integer-valued
    float64 vector in ``delta`` (the protocol's ring codec encodes it exactly). Sampling,
    rounding and noise come from fresh OS randomness (:mod:`bfl_private.privacy.distributed_dp`)."""
    from .privacy.distributed_dp import noisy_gradient_share

    model = build_model(config.model, client.n_features, client.n_classes)
    load_flat(model, global_params)
    split = client.data.train
    share = noisy_gradient_share(model, split.features, split.labels, plan.shares)
    return LocalUpdate(client.client_id, share.astype(np.float64), client.records)
