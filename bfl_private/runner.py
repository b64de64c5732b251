"""What ``bfl-private round`` does: open or create the federation, plan, run, report."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from .config import GenesisChoice, apply_choices, conflicts
from .coordinator import (
    CommandPlan,
    Federation,
    RoundSummary,
    RunRefused,
    checked_data,
    plan_command,
)
from .dirlock import exclusive_writer
from .ledger.store import Ledger
from .models import build_model, parameter_count
from .primitives.errors import BflError
from .settings import DISTRIBUTED_PROTOCOLS, DISTRIBUTED_SAMPLE_RATE, FederationSettings, SettingsError

DEFAULT_ROUNDS = 40

__all__ = ["RoundOptions", "RunInterrupted", "RunRefused", "RunReport", "create_federation", "new_federation_settings",
           "run_command"]


class RunInterrupted(BflError, RuntimeError):
    """Ctrl-C during a command: the rounds committed before it stay on the ledger."""

    def __init__(self, committed: int) -> None:
        super().__init__(f"interrupted: {committed} round(s) committed; run again to continue")
        self.committed = committed


@dataclass(frozen=True)
class RoundOptions:
    epsilon: float
    rounds: int | None = None
    clients: int | None = None
    dataset: str | None = None
    model: str | None = None
    protocol: str | None = None
    dp: str | None = None
    seed: int | None = None
    budget: float | None = None
    dropout: float = 0.0
    malicious: int = 0
    skip_exhausted: bool = False
    remote_validators: tuple[tuple[str, str], ...] = ()
    """(validator name, HOST:PORT) of validators running as their own processes."""
    genesis: tuple[GenesisChoice, ...] = ()
    """Further genesis settings (a config file's, or flags beyond the shortcuts above)."""

    def genesis_choices(self) -> tuple[GenesisChoice, ...]:
        """Every genesis setting asked for: ``genesis``, then the shortcut flags (which win)."""
        return self.genesis + shortcut_choices(dataset=self.dataset, clients=self.clients, model=self.model,
                                               seed=self.seed, budget=self.budget, protocol=self.protocol,
                                               dp=self.dp)

    def new_federation_settings(self) -> FederationSettings:
        """The settings a new federation gets (:func:`new_federation_settings`)."""
        return new_federation_settings(self.genesis_choices())


def new_federation_settings(choices: tuple[GenesisChoice, ...]) -> FederationSettings:
    """The settings ``round`` and ``init`` give a new federation: the defaults with every
    choice applied and, unless a privacy mode was asked for, distributed DP wherever it
    applies (a protocol whose sum is exact in the ring, enough hospitals for t, zero-out
    neighbours), else local DP; distributed DP samples at :data:`DISTRIBUTED_SAMPLE_RATE`
    unless a rate was asked for. Distributed DP is the default because it measured better
    at equal ε (README "Results"); the library's ``FederationSettings()`` stays local."""
    settings = apply_choices(FederationSettings(), choices)
    asked = {c.field for c in choices}
    if "privacy.mode" not in asked:
        try:
            settings = apply_choices(settings, (GenesisChoice("privacy.mode", "distributed", "the default of round"),))
        except SettingsError:
            return settings
    if settings.privacy.mode == "distributed" and "privacy.sample_rate" not in asked:
        settings = apply_choices(settings, (GenesisChoice("privacy.sample_rate", DISTRIBUTED_SAMPLE_RATE,
                                                          "distributed DP's default"),))
    return settings


def shortcut_choices(*, dataset: str | None = None, clients: int | None = None, model: str | None = None,
                     seed: int | None = None, budget: float | None = None,
                     protocol: str | None = None, dp: str | None = None) -> tuple[GenesisChoice, ...]:
    """The command line's genesis flags as choices (None: not given)."""
    fields = [("dataset", dataset, "--dataset"), ("n_clients", clients, "--clients"),
              ("training.model", model, "--model"), ("data_seed", seed, "--seed"),
              ("privacy.lifetime_epsilon", budget, "--budget"), ("protocol.name", protocol, "--protocol"),
              ("privacy.mode", dp, "--dp")]
    return tuple(GenesisChoice(f, v, flag) for f, v, flag in fields if v is not None)


@dataclass
class RunReport:
    directory: Path
    protocol: str
    created: bool
    plan: CommandPlan
    rounds: list[RoundSummary] = field(default_factory=list)
    clients: list[dict[str, Any]] = field(default_factory=list)

    @property
    def all_aborted(self) -> bool:
        """Every round of the command aborted: nothing was aggregated (the spend is recorded)."""
        return bool(self.rounds) and all(r.status == "aborted" for r in self.rounds)

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


def _check_continuation(settings: FederationSettings, options: RoundOptions) -> None:
    """Genesis settings asked for must agree with the federation they would continue; the
    protocol is the exception: each command may choose its own (genesis records the default)."""
    asked = tuple(c for c in options.genesis_choices() if c.source != "--protocol")
    if clashes := conflicts(settings, asked):
        raise RunRefused(f"{'; '.join(clashes)}: genesis parameters cannot change — use another --dir "
                         f"for a new federation")


def _check_malicious(options: RoundOptions, plan: CommandPlan) -> None:
    if options.malicious >= len(plan.clients):
        raise RunRefused(f"--malicious {options.malicious} leaves no honest client among {len(plan.clients)}")


def preflight(settings: FederationSettings, options: RoundOptions) -> None:
    """Every refusal a new federation's first command can meet, checked before anything is
    written: the data split and δ (DataError, PrivacyError), the budget plan, --malicious and
    --validator (RunRefused)."""
    if options.remote_validators:
        raise RunRefused("--validator needs an existing federation: create it with bfl-private init, start its "
                         "validators (bfl-private validator), then run rounds")
    data = checked_data(settings)  # DataError and PrivacyError propagate
    ids = [c.client_id for c in data.clients]
    dimension = parameter_count(build_model(settings.training.model, data.n_features, data.n_classes))
    plan = plan_command(settings, {c: [] for c in ids}, {c: settings.privacy.lifetime_epsilon for c in ids},
                        epsilon=options.epsilon, rounds=options.rounds or DEFAULT_ROUNDS,
                        skip_exhausted=options.skip_exhausted,
                        records={c.client_id: len(c.train) for c in data.clients}, dimension=dimension)
    _check_malicious(options, plan)


def create_federation(directory: Path, settings: FederationSettings, *, model_seed: int) -> Federation:
    """Make ``directory`` (and its parents) and write the federation's genesis under its
    writer lock; RunRefused if a federation or anything else is already there. The data
    and δ are checked first, so a refusal leaves no directory behind."""
    checked_data(settings)
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive_writer(directory):
        if Federation.exists(directory):
            raise RunRefused(f"{directory} already holds a federation")
        return Federation.create(directory, settings, model_seed=model_seed)


def client_summaries(federation: Federation) -> list[dict[str, Any]]:
    state = federation.ledger.state
    return [
        {"id": c, "epsilon": float(v["epsilon_spent"]), "budget": float(v["epsilon_budget"]),
         "balance": int(v["balance"])}
        for c, v in sorted(state.clients().items())
    ]


def run_command(directory: Path, options: RoundOptions, *, quiet: bool = False) -> RunReport:
    """Create the federation if ``directory`` holds none (after every refusal check, so a
    refused command writes nothing), then run the rounds under the directory's writer lock.

    Raises RunRefused (nothing run), DirectoryBusy (another writer), SettingsError,
    DataError or PrivacyError (bad settings or data: nothing written) and RunInterrupted.
    """
    directory = Path(directory)
    if not Federation.exists(directory):
        preflight(options.new_federation_settings(), options)
        directory.mkdir(parents=True, exist_ok=True)
    with exclusive_writer(directory):
        # Checked again under the lock: another command may have created it meanwhile.
        created = not Federation.exists(directory)
        if created:
            federation = Federation.create(directory, options.new_federation_settings(), model_seed=options.seed or 0)
        else:
            federation = Federation.open(directory, remote_validators=dict(options.remote_validators))
        last_round = federation.ledger.state.last_round
        try:
            return _run(federation, directory, options, created=created, quiet=quiet)
        except KeyboardInterrupt:
            federation.close()
            raise RunInterrupted(_rounds_since(directory, last_round)) from None
        finally:
            federation.close()


def _rounds_since(directory: Path, last_round: int) -> int:
    """Rounds on the ledger now beyond ``last_round``, re-read from disk: a commit cut
    short by Ctrl-C is either all there or not at all."""
    with Ledger.open(directory) as ledger:
        return ledger.state.last_round - last_round


def _run(federation: Federation, directory: Path, options: RoundOptions, *, created: bool,
         quiet: bool) -> RunReport:
    import torch

    # The models are tiny: handing each small op to a second thread costs more than the
    # maths, and on a busy 2-core machine it thrashes (backward took 47 ms instead of <1 ms).
    torch.set_num_threads(1)
    if not created:
        _check_continuation(federation.settings, options)
    rounds = options.rounds or DEFAULT_ROUNDS
    protocol = options.protocol or federation.settings.protocol.name
    if federation.settings.privacy.mode == "distributed" and protocol not in DISTRIBUTED_PROTOCOLS:
        raise RunRefused(f"this federation runs distributed DP, whose noise shares need a secure sum exact in the "
                         f"integer ring ({', '.join(DISTRIBUTED_PROTOCOLS)}), not --protocol {protocol}")
    # What an earlier command left unwritten is settled first: its spend counts in the plan.
    federation.settle_interrupted_round()
    plan = federation.plan(epsilon=options.epsilon, rounds=rounds, skip_exhausted=options.skip_exhausted)
    _check_malicious(options, plan)
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
