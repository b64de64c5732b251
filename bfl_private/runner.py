"""What ``bfl-private round`` does: open or create the federation, plan, run, report."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .coordinator import CommandPlan, Federation, RoundSummary, RunRefused
from .settings import FederationSettings, ProtocolSettings

DEFAULT_ROUNDS = 40

__all__ = ["RoundOptions", "RunRefused", "RunReport", "run_command"]


@dataclass(frozen=True)
class RoundOptions:
    epsilon: float
    rounds: int | None = None
    clients: int | None = None
    dataset: str | None = None
    model: str | None = None
    protocol: str | None = None
    seed: int | None = None
    budget: float | None = None
    dropout: float = 0.0
    malicious: int = 0
    skip_exhausted: bool = False


@dataclass
class RunReport:
    directory: Path
    protocol: str
    created: bool
    plan: CommandPlan
    rounds: list[RoundSummary] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "directory": str(self.directory),
            "protocol": self.protocol,
            "created": self.created,
            "epsilon_this_command": self.plan.epsilon,
            "left_out": dict(self.plan.left_out),
            "rounds": [
                {"round": r.round, "status": r.status, "test_accuracy": r.test_accuracy,
                 "survivors": list(r.survivors), "dropouts": list(r.dropouts), "rejected": dict(r.rejected),
                 "seconds": round(r.seconds, 3)}
                for r in self.rounds
            ],
            "clients": self.clients,
        }

    def print(self, console: Console) -> None:
        rounds = Table(title=f"Rounds ({self.protocol})")
        for column in ("round", "status", "test accuracy", "survivors", "dropouts", "rejected", "seconds"):
            rounds.add_column(column, justify="right" if column not in ("status",) else "left")
        for r in self.rounds:
            rounds.add_row(str(r.round), r.status, f"{r.test_accuracy:.4f}", str(len(r.survivors)),
                           str(len(r.dropouts)), str(len(r.rejected)), f"{r.seconds:.2f}")
        console.print(rounds)
        clients = Table(title="Clients")
        for column in ("client", "cumulative ε", "budget", "balance"):
            clients.add_column(column, justify="left" if column == "client" else "right")
        for c in self.clients:
            clients.add_row(c["id"], f"{c['epsilon']:.4f}", f"{c['budget']:g}", str(c["balance"]))
        console.print(clients)
        for client, reason in self.plan.left_out.items():
            console.print(f"[yellow]left out[/] {client}: {reason}")
        console.print(f"Ledger: {self.directory}  (check it with: bfl-private verify {self.directory})")


def _genesis_settings(options: RoundOptions) -> FederationSettings:
    base = FederationSettings()
    return dataclasses.replace(
        base,
        dataset=options.dataset or base.dataset,
        n_clients=options.clients or base.n_clients,
        data_seed=options.seed if options.seed is not None else base.data_seed,
        training=dataclasses.replace(base.training, model=options.model or base.training.model),
        protocol=ProtocolSettings(name=options.protocol or base.protocol.name),
        privacy=dataclasses.replace(base.privacy, lifetime_epsilon=options.budget or base.privacy.lifetime_epsilon),
    )


def _check_continuation(settings: FederationSettings, options: RoundOptions) -> None:
    """Genesis-only flags must agree with the federation they would continue."""
    fixed = {"--clients": (options.clients, settings.n_clients), "--dataset": (options.dataset, settings.dataset),
             "--model": (options.model, settings.training.model), "--seed": (options.seed, settings.data_seed),
             "--budget": (options.budget, settings.privacy.lifetime_epsilon)}
    for flag, (asked, recorded) in fixed.items():
        if asked is not None and asked != recorded:
            raise RunRefused(f"{flag} {asked} conflicts with the federation's genesis ({recorded}); "
                             f"genesis parameters cannot change — use another --dir for a new federation")


def client_summaries(federation: Federation) -> list[dict[str, Any]]:
    state = federation.ledger.state
    return [
        {"id": c, "epsilon": float(v["epsilon_spent"]), "budget": float(v["epsilon_budget"]),
         "balance": int(v["balance"])}
        for c, v in sorted(state.clients().items())
    ]


def run_command(directory: Path, options: RoundOptions, *, quiet: bool = False) -> RunReport:
    import torch

    # The models are tiny: handing each small op to a second thread costs more than the
    # maths, and on a busy 2-core machine it thrashes (backward took 47 ms instead of <1 ms).
    torch.set_num_threads(1)
    directory = Path(directory)
    created = not Federation.exists(directory)
    if created:
        settings = _genesis_settings(options)
        federation = Federation.create(directory, settings, model_seed=options.seed or 0)
    else:
        federation = Federation.open(directory)
        _check_continuation(federation.settings, options)
    try:
        rounds = options.rounds or DEFAULT_ROUNDS
        protocol = options.protocol or federation.settings.protocol.name
        plan = federation.plan(epsilon=options.epsilon, rounds=rounds, skip_exhausted=options.skip_exhausted)
        if options.malicious >= len(plan.clients):
            raise RunRefused(f"--malicious {options.malicious} leaves no honest client among {len(plan.clients)}")
        report = RunReport(directory, protocol, created, plan)
        rng = np.random.default_rng(options.seed)
        progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), disable=quiet, transient=False)
        with progress:
            round_task = progress.add_task("rounds", total=rounds)
            client_task = progress.add_task("clients", total=len(plan.clients))
            for _ in range(rounds):
                progress.reset(client_task)

                def advance(client: str) -> None:
                    progress.update(client_task, advance=1, description=f"clients ({client})")

                summary = federation.run_round(plan, protocol=protocol, dropout=options.dropout,
                                               malicious=options.malicious, rng=rng, on_client=advance)
                report.rounds.append(summary)
                progress.update(round_task, advance=1, description=f"round {summary.round}: {summary.status}, "
                                f"accuracy {summary.test_accuracy:.3f}")
        report.clients = client_summaries(federation)
        return report
    finally:
        federation.close()
