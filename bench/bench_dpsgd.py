"""DP-SGD (Opacus, via ``train_dp``) time per epoch over non-private SGD time per epoch.

Both loops see the same data, the same expected batch size (q·n) and the same number of
steps, and index the tensors the same way; the DP side includes what a federated round
pays on every call (model copy, ``make_private``). Measured for both models of
``bfl_private.models``, for each correct grad sampler, with one torch thread and with
torch's default thread count, on breast cancer as one pool (n≈330, q=1/10) and as one
hospital of the federation (n≈33, q=1/2). Times are the best of ``repeats`` runs.

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
                                 sample_rate=q, steps=steps, learning_rate=0.1, seed=0, grad_sample_mode=mode)
                    dp()  # warm-up (first call imports and builds Opacus's hooks)
                    private = best_time(dp, repeats)
                    rows.append({
                        "suite": "dpsgd", "data": f"{name} n={n} q=1/{batches}", "model": kind, "threads": threads,
                        "grad_sample_mode": mode, "dp_ms_per_epoch": 1e3 * private / epochs,
                        "nonprivate_ms_per_epoch": 1e3 * plain / epochs, "ratio": private / plain,
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
