"""DP-SGD (Opacus, via ``train_dp``) time per epoch over non-private SGD time per epoch.

Both loops see the same data, the same expected batch size (q·n) and the same number of
steps, and index the tensors the same way; the DP side includes what a federated round
pays on every call (model copy, ``make_private``). Measured for both models of
``bfl_private.models``, for each correct grad sampler, with one torch thread and with
torch's default thread count, on breast cancer as one pool (n≈330, q=1/10) and as one
hospital of the federation (n≈33, q=1/2). Times are the best of ``repeats`` runs.

``opacus_default_ms_per_epoch`` is the cost of the secret randomness: the same DP-SGD as
Opacus ships it (``make_private`` with its Poisson ``DPDataLoader`` and torch's Mersenne
Twister noise, which a seed or 624 outputs reproduce), timed in the same process;
``secure_ratio`` is ``train_dp`` (AES-256-CTR sampling and noise) over it.

    python -m bench.bench_dpsgd
"""
from __future__ import annotations

import torch
from bfl_private.privacy.dpsgd import GRAD_SAMPLE_MODES, train_dp
from torch import nn

from bench import best_time
from bfl_private.data import load_federated
from bfl_private.models import build_model


def _plain_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch: int, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.SGD(model.parameters(), lr=0.1)
    loss_fn = nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        order = torch.randperm(len(y), generator=generator)
        for start in range(0, len(y), batch):
            idx = order[start : start + batch]
            optimiser.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            optimiser.step()
            done += 1
            if done == steps:
                break


def _opacus_default(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, q: float, steps: int, mode: str) -> None:
    """DP-SGD as Opacus ships it: make_private, Poisson DPDataLoader, Mersenne Twister noise."""
    import copy
    import warnings

    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    local = copy.deepcopy(model)
    loader = DataLoader(TensorDataset(x, y), batch_size=max(1, round(q * len(y))))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore")
        dp_model, optimiser, dp_loader = PrivacyEngine().make_private(
            module=local, optimizer=torch.optim.SGD(local.parameters(), lr=0.1), data_loader=loader,
            noise_multiplier=1.0, max_grad_norm=1.0, grad_sample_mode=mode)
        loss_fn = nn.CrossEntropyLoss()
        done = 0
        while done < steps:
            for xb, yb in dp_loader:
                optimiser.zero_grad(set_to_none=True)
                output = dp_model(xb)
                (loss_fn(output, yb) if len(yb) else output.sum()).backward()
                optimiser.step()
                done += 1
                if done == steps:
                    break


def run(*, quick: bool) -> list[dict]:
    default_threads = torch.get_num_threads()
    pool = load_federated("breast_cancer", n_clients=1, partition="iid", seed=0).clients[0].train
    hospital = load_federated("breast_cancer", n_clients=10, partition="iid", seed=0).clients[0].train
    settings = [("pool", pool, 10), ("hospital", hospital, 2)]
    epochs, repeats = (3, 2) if quick else (10, 5)
    rows = []
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for name, split, batches in settings:
            n = len(split)
            q = 1.0 / batches
            steps = epochs * batches
            x, y = torch.from_numpy(split.features), torch.from_numpy(split.labels)
            for kind in ("logreg", "mlp"):
                model = build_model(kind, x.shape[1], 2)
                plain = best_time(lambda: _plain_epochs(model, x, y, batch=max(1, round(q * n)), steps=steps, seed=0), repeats)
                for mode in GRAD_SAMPLE_MODES:
                    def dp() -> None:
                        train_dp(model, split.features, split.labels, noise_multiplier=1.0, clipping_norm=1.0,
                                 sample_rate=q, steps=steps, learning_rate=0.1, grad_sample_mode=mode)
                    def opacus_default() -> None:
                        _opacus_default(model, x, y, q=q, steps=steps, mode=mode)

                    dp()  # warm-up (first call imports and builds Opacus's hooks)
                    opacus_default()
                    private = best_time(dp, repeats)
                    default = best_time(opacus_default, repeats)
                    rows.append({
                        "suite": "dpsgd", "data": f"{name} n={n} q=1/{batches}", "model": kind, "threads": threads,
                        "grad_sample_mode": mode, "dp_ms_per_epoch": 1e3 * private / epochs,
                        "nonprivate_ms_per_epoch": 1e3 * plain / epochs, "ratio": private / plain,
                        "opacus_default_ms_per_epoch": 1e3 * default / epochs, "secure_ratio": private / default,
                    })
    torch.set_num_threads(default_threads)
    return rows


if __name__ == "__main__":
    import sys

    table = run(quick="--quick" in sys.argv)
    keys = list(table[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in table:
        print("| " + " | ".join(f"{r[k]:.3g}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
