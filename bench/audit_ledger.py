"""Real ledgers of R rounds x C clients for the audit benchmark, built by the coordinator.

:class:`bfl_private.coordinator.Federation` writes everything: genesis (CSV data of C
hospitals, keys in ``parties/``), each round's opening, C submissions signed by each client's
own identity, the plain protocol's aggregate and transcript, the new model, the four
validators' checks, attestations and quorum certificates. The only thing skipped is the
clients' DP-SGD (Opacus, far too slow for 10^5 client-rounds): each client sends, through
the engine's :class:`~bfl_private.protocols.base.ForgedInput` hook (a client that skips our
encoder), an in-range weighted update drawn at random, and signs the planned privacy record,
exactly the record an honest client's training would produce. The ledger is therefore
byte-for-byte of the form the coordinator writes and the verifier gets no shortcut.
"""
from __future__ import annotations

import csv
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

FEATURES = 4
RECORDS_PER_HOSPITAL = 10
PUBLIC_RECORDS = 80


def write_csv_data(directory: Path, clients: int, *, seed: int = 0) -> tuple[Path, Path]:
    """A public reference sample and one file of ``clients`` hospitals (split column ``site``)."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    header = [f"x{i}" for i in range(FEATURES)] + ["label"]

    def rows(n: int) -> list[list[str]]:
        x = rng.normal(size=(n, FEATURES))
        y = (x[:, 0] + 0.5 * rng.normal(size=n) > 0).astype(int)
        y[:2] = [0, 1]  # both classes present in every sample
        return [[f"{v:.5g}" for v in xi] + [("no", "yes")[int(yi)]] for xi, yi in zip(x, y)]

    public, private = directory / "public.csv", directory / "all.csv"
    with public.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows(PUBLIC_RECORDS))
    with private.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*header, "site"])
        for h in range(clients):
            writer.writerows([*row, f"site-{h:05d}"] for row in rows(RECORDS_PER_HOSPITAL))
    return public, private


def build_ledger(directory: Path, *, clients: int, rounds: int, seed: int = 0,
                 progress: Callable[[str], None] | None = None) -> None:
    """A federation in ``directory`` with ``rounds`` closed plain rounds among ``clients``."""
    import torch

    from bfl_private.coordinator import Federation
    from bfl_private.fedavg import weighted_payload
    from bfl_private.protocols.base import ForgedInput
    from bfl_private.settings import CsvSource, FederationSettings, PrivacySettings, ProtocolSettings

    torch.set_num_threads(1)
    public, private = write_csv_data(directory.parent / f"{directory.name}-csv", clients, seed=seed)
    settings = FederationSettings(
        dataset="csv", n_clients=clients,
        csv=CsvSource(label="label", public=str(public), file=str(private), split_column="site"),
        privacy=PrivacySettings(lifetime_epsilon=1e3),
        protocol=ProtocolSettings(name="plain"),
    )
    federation = Federation.create(directory, settings, model_seed=seed)
    try:
        plan = federation.plan(epsilon=1.0 * rounds, rounds=rounds, skip_exhausted=False)
        rng = np.random.default_rng(seed)
        records = {c: client.records for c, client in federation.clients.items()}
        max_records = max(records.values())
        length = federation.current_model().shape[0]
        bound = settings.training.update_bound
        started = time.perf_counter()
        for number in range(1, rounds + 1):
            forged = {c: ForgedInput(values=weighted_payload(
                rng.normal(scale=0.01, size=length), records=records[c], max_records=max_records,
                bound=bound).astype(np.float64)) for c in plan.clients}
            summary = federation.run_round(plan, protocol="plain", dropout=0.0, malicious=0, rng=rng,
                                           forged=forged)
            if summary.status == "aborted":
                raise RuntimeError(f"round {number} aborted while building the benchmark ledger")
            if progress is not None:
                progress(f"built round {number}/{rounds} ({clients} clients, "
                         f"{time.perf_counter() - started:.0f} s)")
    finally:
        federation.close()


if __name__ == "__main__":
    clients, rounds = int(sys.argv[2]), int(sys.argv[3])
    build_ledger(Path(sys.argv[1]), clients=clients, rounds=rounds,
                 progress=lambda s: print(s, file=sys.stderr, flush=True))
