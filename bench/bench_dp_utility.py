"""Utility of federated DP-SGD: breast cancer, 10 non-IID hospitals, ε = 1 per hospital for the whole run.

Each hospital trains locally with :func:`bfl_private.privacy.dpsgd.train_dp` (Opacus,
Poisson sampling, σ planned so that the hospital's cumulative ε over all rounds is at
most ``epsilon`` at δ = 1e-5, PLD accountant); the server averages the updates with the
project's FedAvg arithmetic (:mod:`bfl_private.fedavg`, weighted by records). The
baseline, timed in the same process, is the same federation with non-private local
training (same optimizer, rounds, steps, expected batch sizes and learning rate). Reported: test accuracy mean ± sd
and min over 10 runs whose seeds (data split, initial model) are drawn from the OS when the benchmark
runs, the ratio DP / non-private, the planned σ and the largest cumulative ε. DP-SGD's noise and
sampling are fresh OS randomness in every run.

    python -m bench.bench_dp_utility          # 10 fresh runs
"""
from __future__ import annotations

import dataclasses
import secrets
import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch
from bfl_private.privacy.accounting import recorded_epsilon
from bfl_private.privacy.dpsgd import train_dp
from bfl_private.privacy.planner import plan_noise_multiplier
from torch import nn

from bfl_private.data import FederatedDataset, load_federated
from bfl_private.fedavg import next_global_model, weighted_payload
from bfl_private.models import build_model, flatten_parameters, load_flat


@dataclass(frozen=True)
class Recipe:
    """Everything that defines one federated run except the seed."""

    model: str = "logreg"
    rounds: int = 40
    local_steps: int = 3
    sample_rate: float = 0.25
    clipping_norm: float = 1.0
    learning_rate: float = 0.05
    optimizer: str = "adam"
    momentum: float = 0.0
    server_learning_rate: float = 1.0
    epsilon: float = 1.0
    delta: float = 1e-5
    update_bound: float = 1.0
    """Per-coordinate bound of a weighted update (the secure-aggregation encoding range)."""
    accountant: str = "pld"


RECOMMENDED = Recipe()
"""The application's defaults (``bfl_private.settings``), found by tuning: DP-Adam beat
DP-SGD by ~2 points at ε = 1; more, shorter rounds beat fewer, longer ones (40 x 3 was
chosen on seeds 5-9, not on the reported seeds); q, C and averaging the last global
models changed little; binary logistic regression without the redundant logit gained
about a point."""


def _plain_training(model: nn.Module, x: np.ndarray, y: np.ndarray, recipe: Recipe, seed: int) -> nn.Module:
    """Non-private local training: same optimizer, lr, steps and expected batch (q·n, uniform)."""
    generator = torch.Generator().manual_seed(seed)
    features, labels = torch.from_numpy(x), torch.from_numpy(y)
    optimiser = (
        torch.optim.Adam(model.parameters(), lr=recipe.learning_rate)
        if recipe.optimizer == "adam"
        else torch.optim.SGD(model.parameters(), lr=recipe.learning_rate, momentum=recipe.momentum)
    )
    batch = max(1, round(recipe.sample_rate * len(y)))
    for _ in range(recipe.local_steps):
        idx = torch.randperm(len(y), generator=generator)[:batch]
        optimiser.zero_grad()
        nn.functional.cross_entropy(model(features[idx]), labels[idx]).backward()
        optimiser.step()
    return model


def _accuracy(model: nn.Module, data: FederatedDataset) -> float:
    with torch.no_grad():
        predicted = model(torch.from_numpy(data.test.features)).argmax(dim=1).numpy()
    return float(np.mean(predicted == data.test.labels))


def run_federated(recipe: Recipe, *, seed: int, private: bool = True) -> dict[str, float]:
    """One federated run; returns test accuracy, σ, the largest cumulative ε and the time taken."""
    data = load_federated("breast_cancer", n_clients=10, partition="dirichlet", seed=seed)
    started = time.perf_counter()
    sigma = (
        plan_noise_multiplier(
            target_epsilon=recipe.epsilon,
            delta=recipe.delta,
            sample_rate=recipe.sample_rate,
            steps_per_round=recipe.local_steps,
            rounds=recipe.rounds,
            accountant=recipe.accountant,
        )
        if private
        else 0.0
    )
    model = build_model(recipe.model, data.n_features, data.n_classes, seed=seed)
    params = flatten_parameters(model)
    max_records = max(len(c.train) for c in data.clients)
    histories: dict[str, list] = {c.client_id: [] for c in data.clients}
    for round_id in range(recipe.rounds):
        total = np.zeros(params.shape[0] + 1, dtype=np.float64)
        for index, client in enumerate(data.clients):
            load_flat(model, params)
            client_seed = seed * 1_000_003 + round_id * 101 + index
            x, y = client.train.features, client.train.labels
            if private:
                result = train_dp(
                    model, x, y, noise_multiplier=sigma, clipping_norm=recipe.clipping_norm,
                    sample_rate=recipe.sample_rate, steps=recipe.local_steps,
                    learning_rate=recipe.learning_rate, delta=recipe.delta,
                    optimizer=recipe.optimizer, momentum=recipe.momentum, accountant=recipe.accountant,
                )
                histories[client.client_id].append(result.record)
                trained = result.model
            else:
                trained = _plain_training(model, x, y, recipe, client_seed)
            delta = flatten_parameters(trained) - params
            total += weighted_payload(delta, records=len(y), max_records=max_records, bound=recipe.update_bound)
        params = next_global_model(params, total.astype(np.float32), server_learning_rate=recipe.server_learning_rate)
    elapsed = time.perf_counter() - started
    load_flat(model, params)
    spent = max((recorded_epsilon(h) for h in histories.values()), default=0.0)
    if spent > recipe.epsilon:
        raise AssertionError(f"a hospital spent ε={spent} > {recipe.epsilon}")
    return {"accuracy": _accuracy(model, data), "sigma": sigma, "max_epsilon": spent, "seconds": elapsed}


def evaluate(recipe: Recipe, seeds: list[int]) -> dict[str, float]:
    """Mean ± sd accuracy over seeds, private and non-private, with the time ratio."""
    dp = [run_federated(recipe, seed=s) for s in seeds]
    plain = [run_federated(recipe, seed=s, private=False) for s in seeds]
    dp_acc = [r["accuracy"] for r in dp]
    plain_acc = [r["accuracy"] for r in plain]
    return {
        "seeds": len(seeds),
        "dp_accuracy_mean": statistics.fmean(dp_acc),
        "dp_accuracy_sd": statistics.stdev(dp_acc) if len(seeds) > 1 else 0.0,
        "dp_accuracy_min": min(dp_acc),
        "nonprivate_accuracy_mean": statistics.fmean(plain_acc),
        "nonprivate_accuracy_sd": statistics.stdev(plain_acc) if len(seeds) > 1 else 0.0,
        "accuracy_ratio": statistics.fmean(dp_acc) / statistics.fmean(plain_acc),
        "sigma": dp[0]["sigma"],
        "max_epsilon": max(r["max_epsilon"] for r in dp),
        "dp_seconds_per_run": statistics.fmean(r["seconds"] for r in dp),
        "time_ratio": statistics.fmean(r["seconds"] for r in dp) / statistics.fmean(r["seconds"] for r in plain),
    }


def run(*, quick: bool) -> list[dict]:
    """The recommended recipe, planned with the PLD accountant and (for contrast) with RDP."""
    torch.set_num_threads(1)
    seeds = [secrets.randbelow(2**31) for _ in range(1 if quick else 10)]
    rows = []
    for recipe in (RECOMMENDED, dataclasses.replace(RECOMMENDED, accountant="rdp")):
        row = {"suite": "dp_utility", **dataclasses.asdict(recipe)}
        row.update(evaluate(recipe, seeds))
        rows.append(row)
    return rows


if __name__ == "__main__":
    import logging
    import sys

    logging.getLogger("absl").setLevel(logging.ERROR)  # dp-accounting's RDP order warnings

    rows = run(quick="--quick" in sys.argv)
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
