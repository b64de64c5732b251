"""The federation's roles: clients that train locally, an aggregator that only sums.

Clients and the aggregator talk through an :class:`AggregationProtocol`; the loop never
depends on which one. The FedAvg arithmetic itself lives in :mod:`bfl_private.fedavg`.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from . import distributed_round
from .data import ClientData, Split
from .distributed_round import DistributedPlan, ServerState
from .distributed_round import aggregate_violation as distributed_violation
from .distributed_round import model_after
from .fedavg import next_global_model, weighted_payload
from .models import build_model, flatten_parameters, load_flat
from .privacy.accounting import PrivacyRecord
from .protocols.base import AggregationProtocol, AggregationResult, ForgedInput, Stage
from .protocols.errors import InvalidAggregate
from .round_checks import aggregate_rule_violation
from .settings import FederationSettings, PrivacySettings, TrainingConfig


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


@dataclass(frozen=True)
class DistributedRound:
    """What the aggregator of a distributed-DP round needs beyond the protocol."""

    plan: DistributedPlan
    participants: int
    state: ServerState
    """The server optimiser's state that goes with the round's base model."""
    settings: FederationSettings


@dataclass
class Aggregator:
    """Combines protected updates through a protocol; never sees a secret of a client."""

    protocol: AggregationProtocol
    records: Mapping[str, int]
    """Every client's registered record count (public): its FedAvg weight."""
    config: TrainingConfig = field(default_factory=TrainingConfig)
    distributed: DistributedRound | None = None
    """Set in distributed DP: updates are integer shares, summed as they are, and the server
    optimiser steps on the noisy sum (:mod:`bfl_private.distributed_round`)."""

    def aggregate(
        self,
        global_params: np.ndarray,
        updates: Sequence[LocalUpdate],
        *,
        round_id: int,
        round_seed: bytes,
        drop: Mapping[str, Stage] | None = None,
        payloads: Mapping[str, np.ndarray] | None = None,
        forged: Mapping[str, ForgedInput] | None = None,
    ) -> tuple[np.ndarray, ServerState | None, AggregationResult]:
        """Run the protocol; return the new global parameters, the server optimiser's state
        (distributed DP; None otherwise) and the protocol result.

        ``payloads`` replaces chosen clients' vectors (a client whose input never leaves
        it, or one that follows the encoding with garbage values), ``forged`` what chosen
        clients send (one that skips the encoding); honest clients' payloads are computed
        here. Raises :class:`InvalidAggregate` (a :class:`RoundAbort`) when the decoded sum
        cannot be the included clients' payloads: the round is refused, never averaged.
        """
        max_records = max(self.records.values())
        vectors = {
            u.client_id: u.delta if self.distributed is not None else weighted_payload(
                u.delta, records=u.records, max_records=max_records, bound=self.config.update_bound
            )
            for u in updates
        }
        vectors.update(payloads or {})
        result = self.protocol.aggregate(vectors, round_id=round_id, round_seed=round_seed, drop=drop, forged=forged)
        if self.distributed is None:
            violation = aggregate_rule_violation(
                result.total, protocol=result.protocol, transcript=result.transcript, included=result.included,
                records=self.records, bound=self.config.update_bound)
        else:
            violation = distributed_violation(
                result.total, self.distributed.plan, participants=self.distributed.participants,
                included_records=distributed_round.records_of(self.records, result.included))
        if violation is not None:
            refused = InvalidAggregate(f"round {round_id}: {violation}", stage="decode")
            refused.received = {**result.submissions, **result.rejected_submissions}
            raise refused
        if self.distributed is not None:
            new_params, state = model_after(
                global_params, self.distributed.state, result.total, self.distributed.plan,
                settings=self.distributed.settings,
                included_records=distributed_round.records_of(self.records, result.included))
            return new_params, state, result
        new_params = next_global_model(
            global_params, result.total, server_learning_rate=self.config.server_learning_rate
        )
        return new_params, None, result


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
