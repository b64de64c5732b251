"""``bfl-private``: run private federated rounds, and let anyone verify the ledger.

Heavy machinery (torch, Opacus, TenSEAL) is imported inside the commands that need it,
so ``bfl-private verify`` starts fast and works where torch is missing.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click
from rich.console import Console

from .primitives.errors import BflError
from .settings import PRIVACY_MODES, PROTOCOLS

if TYPE_CHECKING:  # the runner imports torch: commands import it when they run
    from .config import RunConfig
    from .runner import RoundOptions

# Exit codes (README "Exit codes"): every error at the command line is one line on stderr
# (or one JSON object on stdout under --json) with one of these.
EXIT_VERIFICATION_FAILED = 1
EXIT_USAGE = 2
EXIT_REFUSED = 3
EXIT_CHAIN = 4
EXIT_ALL_ABORTED = 5
EXIT_NOT_CERTIFIED = 6
EXIT_INTERRUPTED = 130

CONSOLE_WIDTH = 120
"""Tables are laid out this wide when output is not a terminal, whatever COLUMNS says, so
piped or redirected output is the same everywhere (rich would otherwise fall back to 80)."""


def console(*, stderr: bool = False) -> Console:
    """A console whose layout does not depend on the terminal when piped."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else CONSOLE_WIDTH)


class CliError(BflError):
    """An error to report in one line with a documented exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def _fail(message: str, code: int) -> NoReturn:
    raise CliError(message, code)


def _report_error(message: str, code: int, *, as_json: bool) -> NoReturn:
    line = " ".join(message.split())  # one line, whatever the exception text held
    if as_json:
        click.echo(json.dumps({"error": line, "exit_code": code}, sort_keys=True))
    else:
        click.echo(f"error: {line}", err=True)
    sys.exit(code)


class _Cli(click.Group):
    """The command group, with one error boundary for every command (and for click's own
    usage errors, which it would print over three lines with exit 2 or as "Aborted!")."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:
        argv = list(sys.argv[1:] if args is None else args)
        as_json = "--json" in argv
        if threading.current_thread() is threading.main_thread():
            # A command started by a script or a non-interactive shell's "&" may inherit SIGINT
            # ignored; an interrupt must still stop it between rounds (exit 130, rounds kept).
            signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            result = super().main(argv, prog_name, complete_var, standalone_mode=False, **extra)
        except CliError as exc:
            _report_error(str(exc), exc.code, as_json=as_json)
        except click.ClickException as exc:
            ctx: click.Context | None = getattr(exc, "ctx", None)  # usage errors carry the command
            where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            _report_error(exc.format_message() + where, EXIT_USAGE, as_json=as_json)
        except (click.Abort, KeyboardInterrupt):
            _report_error("interrupted", EXIT_INTERRUPTED, as_json=as_json)
        sys.exit(result if isinstance(result, int) else 0)


def _finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    """Callback for ε-like options: click's float type accepts inf and nan."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter(f"must be a finite number > 0, got {value}", param=param)
    return value


def _federation_options(command: Callable[..., None]) -> Callable[..., None]:
    """Options of the commands that create or run a federation: --dir, --config, --json, and
    the flags that fix a new federation's genesis (and must agree with it later)."""
    for decorator in reversed([
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="TOML run configuration (README \"Configuration file\"); flags override it."),
        click.option("--clients", type=click.IntRange(2, 1000), default=None, help="Clients (at genesis only)."),
        click.option("--dataset", type=click.Choice(["breast_cancer", "digits"]), default=None, help="Dataset (at genesis only)."),
        click.option("--model", type=click.Choice(["logreg", "mlp"]), default=None, help="Model (at genesis only)."),
        click.option("--protocol", type=click.Choice(PROTOCOLS), default=None, help="Aggregation protocol (default: masking)."),
        click.option("--dp", type=click.Choice(PRIVACY_MODES), default=None,
                     help="Privacy mode (at genesis only): 'distributed' Skellam noise shares inside the secure sum (the "
                          "default with masking or paillier), or 'local' DP-SGD noise on each hospital (the default "
                          "otherwise)."),
        click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("bfl-ledger"), show_default=True, help="The federation's directory."),
        click.option("--budget", type=float, callback=_finite, default=None, help="Lifetime ε budget per client (at genesis only; default 3.0)."),
        click.option("--seed", type=int, default=None, help="Seed of the demo data split and initial model only (at genesis; public). DP noise and sampling never depend on it: they come from fresh OS randomness every round."),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables (errors too)."),
    ]):
        command = decorator(command)
    return command


def _check_directory(directory: Path) -> None:
    """--dir must be (or be creatable as) a writable directory: usage error otherwise."""
    probe = directory
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "" if probe == directory else f" ({probe} is a file)"
        _fail(f"--dir {directory} is not a directory{where}", EXIT_USAGE)
    if not os.access(probe, os.W_OK | os.X_OK):
        _fail(f"--dir {directory}: {probe} is not writable (read-only filesystem or permissions)", EXIT_USAGE)


def _load_config(path: Path | None) -> RunConfig:
    from .config import ConfigError, RunConfig, RunSection, load_config

    if path is None:
        return RunConfig((), RunSection())
    try:
        return load_config(path)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)


def _round_options(options: dict[str, Any]) -> RoundOptions:
    """RoundOptions from the flags, falling back on the config file's [run] and genesis tables."""
    from .runner import RoundOptions

    config = _load_config(options.pop("config_file"))
    run = config.run
    for name in ("epsilon", "rounds", "protocol", "dropout", "malicious", "skip_exhausted"):
        if options.get(name) in (None, False) and getattr(run, name) is not None:
            options[name] = getattr(run, name)
    if options["epsilon"] is None:
        _fail("give --epsilon E (or [run] epsilon in --config): the privacy budget (ε) this command "
              "may spend per client", EXIT_USAGE)
    _finite(click.get_current_context(), _param("epsilon"), options["epsilon"])
    return RoundOptions(**{k: v for k, v in options.items() if v is not None}, genesis=config.genesis)


def _validator_addresses(_ctx: click.Context, param: click.Parameter,
                         values: tuple[str, ...]) -> tuple[tuple[str, str], ...] | None:
    """--validator NAME=HOST:PORT, each name once."""
    from .validator_service import parse_address

    pairs = []
    for value in values:
        name, sep, address = value.partition("=")
        try:
            if not sep or not name:
                raise ValueError(f"{value!r} is not NAME=HOST:PORT")
            parse_address(address)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param=param) from None
        pairs.append((name, address))
    if len({name for name, _ in pairs}) != len(pairs):
        raise click.BadParameter("a validator is named twice", param=param)
    return tuple(pairs) or None


def _param(name: str) -> click.Parameter:
    ctx = click.get_current_context()
    return next(p for p in ctx.command.params if p.name == name)


@contextmanager
def _federation_errors(directory: Path) -> Iterator[None]:
    """What creating, opening or running a federation can raise, as one-line errors."""
    from .coordinator import RunRefused
    from .data import DataError
    from .dirlock import DirectoryBusy
    from .keyring import KeyringError
    from .ledger.errors import VerificationError
    from .privacy.errors import PrivacyError
    from .protocol_setup import ProtocolUnavailable
    from .runner import RunInterrupted
    from .settings import SettingsError
    from .validator_service import QuorumNotReached

    try:
        yield
    except (DataError, PrivacyError, SettingsError) as exc:
        _fail(str(exc), EXIT_USAGE)
    except KeyringError as exc:
        _fail(f"{directory}: {exc}", EXIT_USAGE)
    except (RunRefused, DirectoryBusy, ProtocolUnavailable) as exc:
        _fail(str(exc), EXIT_REFUSED)
    except QuorumNotReached as exc:
        _fail(f"{exc} (the rounds before it are recorded)", EXIT_NOT_CERTIFIED)
    except RunInterrupted as exc:
        _fail(str(exc), EXIT_INTERRUPTED)
    except VerificationError as exc:
        _fail(f"{directory}: the ledger does not check out ({type(exc).__name__}: {exc}); nothing was run "
              f"(bfl-private verify {directory} tells more)", EXIT_VERIFICATION_FAILED)
    except OSError as exc:
        _fail(f"cannot use --dir {directory}: {exc.strerror or exc}", EXIT_USAGE)


@click.group(cls=_Cli, context_settings={"terminal_width": None if sys.stdout.isatty() else CONSOLE_WIDTH})
@click.version_option(package_name="bfl-private")
def main() -> None:
    """Private, auditable federated learning."""


@main.command("init")
@_federation_options
def init_command(directory: Path, as_json: bool, config_file: Path | None, **flags: Any) -> None:
    """Create a federation in --dir (keys, genesis block) without running a round."""
    from .ledger.genesis import GenesisRecord
    from .runner import create_federation, new_federation_settings, shortcut_choices

    _check_directory(directory)
    choices = _load_config(config_file).genesis + shortcut_choices(**flags)
    with _federation_errors(directory):
        settings = new_federation_settings(choices)
        federation = create_federation(directory, settings, model_seed=flags["seed"] or 0)
    try:
        genesis = GenesisRecord.of(federation.ledger.genesis())
    finally:
        federation.close()
    summary = {"directory": str(directory), "federation_id": genesis.federation_id,
               "clients": len(genesis.clients), "validators": len(genesis.validators),
               "settings": settings.to_json()}
    if as_json:
        click.echo(json.dumps(summary, sort_keys=True))
    else:
        click.echo(f"created federation {summary['federation_id']} in {directory}: {summary['clients']} clients, "
                   f"{summary['validators']} validators, dataset {settings.dataset}, protocol "
                   f"{settings.protocol.name}, lifetime ε budget {settings.privacy.lifetime_epsilon:g}, "
                   f"δ {settings.privacy.delta:g}")


@main.command("round")
@click.option("--epsilon", type=float, callback=_finite, default=None, help="Privacy budget (ε) this command may spend per client.")
@click.option("--rounds", type=click.IntRange(1, 1000), default=None, help="Rounds to run in this command.")
@_federation_options
@click.option("--dropout", type=click.FloatRange(0.0, 1.0), default=None, help="Probability that a client vanishes at a random stage (default 0).")
@click.option("--malicious", type=click.IntRange(0, 1000), default=None, help="Clients that submit a garbage update (demo; default 0).")
@click.option("--skip-exhausted", is_flag=True, help="Leave out clients whose budget cannot afford the round instead of refusing.")
@click.option("--chain", "chain_url", default=None, metavar="URL", help="Then anchor every block and post ε and rewards on the EVM node at URL (chain extra).")
@click.option("--validator", "remote_validators", multiple=True, callback=_validator_addresses, metavar="NAME=HOST:PORT",
              help="Validator NAME runs as its own process (bfl-private validator) at HOST:PORT; repeatable. "
                   "The others run in this process.")
def round_command(directory: Path, as_json: bool, chain_url: str | None, **flags: Any) -> None:
    """Run federated rounds; create the federation in --dir first if it is new.

    Exits 5 when every round of the command aborted (their spend is recorded)."""
    from .runner import run_command  # torch lives behind this import

    options = _round_options(flags)
    _check_directory(directory)
    with _federation_errors(directory):
        report = run_command(directory, options, quiet=as_json)
    anchored = None if chain_url is None else _sync_chain(directory, chain_url)
    aborted = (f"every one of the {len(report.rounds)} round(s) aborted: no model was aggregated "
               f"(the aborts and the ε they charged are recorded)") if report.all_aborted else None
    if as_json:
        click.echo(json.dumps({**report.to_json(), **({"chain": anchored} if anchored else {}),
                               **({"error": aborted, "exit_code": EXIT_ALL_ABORTED} if aborted else {})},
                              sort_keys=True))
    else:
        report.print(console())
        if anchored:
            console().print(f"Anchored on chain {anchored['chain_id']}: contract {anchored['contract']}, "
                            f"blocks {anchored['anchored']}, rounds settled {anchored['settled']}, "
                            f"gas {anchored['gas']}", highlight=False)
        if aborted:
            click.echo(f"error: {aborted}", err=True)
    if aborted:
        sys.exit(EXIT_ALL_ABORTED)


def _sync_chain(directory: Path, url: str) -> dict[str, object] | None:
    """Anchor the ledger's new blocks on the EVM node at ``url`` (the rounds stay recorded
    if this fails; the next ``round --chain`` catches up). Exits on failure."""
    from .ledger.errors import LedgerError

    try:
        from .chain_sync import sync
    except ImportError as exc:
        _fail(f"--chain needs the chain extra (pip install 'bfl-private[chain]'): {exc}", 2)
        return None
    from .keyring import KeyringError

    try:
        return sync(directory, url).to_json()
    except (LedgerError, KeyringError) as exc:  # ChainUnavailable is no VerificationError
        _fail(f"chain {url}: {type(exc).__name__}: {exc} (the rounds are recorded; run "
              f"again with --chain to catch up)", EXIT_CHAIN)
        return None


def _read_checkpoint(path: Path | None) -> str | None:
    """The signed checkpoint note in ``path``; exits 2 unless it reads as one."""
    if path is None:
        return None
    from .ledger.blocks import note_checkpoint
    from .ledger.errors import MalformedRecord

    try:
        note = path.read_text(encoding="utf-8")
        note_checkpoint(note)
    except (OSError, UnicodeDecodeError, MalformedRecord) as exc:
        _fail(f"--checkpoint {path}: not a readable signed checkpoint note: {exc}", 2)
    return note


def _expected_genesis(fingerprint: str | None, option: str) -> str | None:
    """The fingerprint in the form the verifier compares; exits 2 unless it is one."""
    if fingerprint is None:
        return None
    from .ledger.errors import MalformedRecord
    from .ledger.verify import parse_fingerprint

    try:
        return parse_fingerprint(fingerprint)
    except MalformedRecord as exc:
        _fail(f"{option}: {exc}", 2)
    return None


@main.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="A signed checkpoint note you kept earlier (from --save-checkpoint, or a witness's): the ledger must extend it, so a truncated or forked copy fails.")
@click.option("--expect-genesis", "expect_genesis", default=None, metavar="FINGERPRINT",
              help="The genesis fingerprint (sha256:…) you hold from the federation: another genesis fails check 2.")
@click.option("--save-checkpoint", "save_checkpoint", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="If every check passes, write the head's signed checkpoint to FILE, to give as --checkpoint next time.")
@click.option("--chain", "chain_url", default=None, metavar="URL", help="Also check every block is final on the EVM anchor and its ε and balances equal the ledger's.")
@click.option("--contract", default=None, metavar="ADDRESS", help="The anchor contract (default: the one DIR/chain.json records).")
def verify_command(directory: Path, as_json: bool, checkpoint_file: Path | None, expect_genesis: str | None,
                   save_checkpoint: Path | None, chain_url: str | None, contract: str | None) -> None:
    """Check a federation's ledger from genesis, trusting nobody. Exit 0 only if all holds.

    Reads DIR read-only and writes nothing into it (works on read-only media). Exit 1 if
    a check failed; with --chain, exit 4 if the chain could not be reached (no verdict)."""
    from .audit import audit
    from .ledger.errors import ChainUnavailable, VerificationError

    if contract is not None and chain_url is None:
        _fail("--contract needs --chain URL", 2)
    if chain_url is not None and contract is None and not (directory / "chain.json").exists():
        # chain_sync.CHAIN_FILE, named here so that the check needs no web3
        _fail(f"--chain: {directory} has no chain.json to name the contract: give --contract ADDRESS",
              EXIT_USAGE)
    trusted = _read_checkpoint(checkpoint_file)
    expected = _expected_genesis(expect_genesis, "--expect-genesis")
    try:
        report = audit(directory, trusted_checkpoint=trusted, expected_genesis=expected,
                       chain_url=chain_url, contract=contract)
    except ImportError as exc:
        _fail(f"--chain needs the chain extra (pip install 'bfl-private[chain]'): {exc}", 2)
    except ChainUnavailable as exc:  # no verdict: the ledger was not checked against the chain
        _fail(f"could not reach the chain {chain_url}: {exc}; nothing was concluded about "
              f"the ledger (run verify without --chain to check it alone)", EXIT_CHAIN)
    except VerificationError as exc:
        _fail(f"chain {chain_url}: {type(exc).__name__}: {exc}", EXIT_VERIFICATION_FAILED)
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        report.print(console())
    if save_checkpoint is not None and report.ok and report.report.anchor is not None:
        try:
            save_checkpoint.write_text(report.report.anchor.head_note, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write --save-checkpoint {save_checkpoint}: {exc}", 2)
        if not as_json:
            click.echo(f"Head checkpoint saved to {save_checkpoint}: give it as --checkpoint next time.")
    sys.exit(0 if report.ok else EXIT_VERIFICATION_FAILED)


@main.command("validator")
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="The federation's directory (its ledger, and this validator's key).")
@click.option("--name", required=True, metavar="NAME", help="This validator's name at genesis (e.g. validator-2).")
@click.option("--listen", default="127.0.0.1:0", show_default=True, metavar="HOST:PORT",
              help="Where to answer the coordinator (port 0: any free port, printed at start).")
def validator_command(directory: Path, name: str, listen: str) -> None:
    """Run one validator as its own process: re-check each round against the ledger and this
    validator's hold-out data, attest, and cosign blocks, until interrupted.

    Prints "validator NAME listening on HOST:PORT", then one line per request. Start the
    coordinator with round --validator NAME=HOST:PORT."""
    from .keyring import KeyringError
    from .ledger.errors import LedgerError
    from .validator_service import UnknownValidator, describe, open_validator, parse_address, validator_server

    try:
        host, port = parse_address(listen)
    except ValueError as exc:
        _fail(f"--listen: {exc}", EXIT_USAGE)
    try:
        validator = open_validator(directory, name)
    except (UnknownValidator, KeyringError, LedgerError) as exc:
        _fail(f"{type(exc).__name__}: {exc}", EXIT_USAGE)
    try:
        server = validator_server(directory, validator, host=host, port=port,
                                  on_request=lambda request, reply: click.echo(describe(request, reply)))
    except OSError as exc:
        _fail(f"--listen {listen}: {exc.strerror or exc}", EXIT_USAGE)
    with server:
        bound_host, bound_port = server.server_address[:2]
        click.echo(f"validator {name} listening on {bound_host}:{bound_port}")
        server.serve_forever()


@main.command("report")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, path_type=Path), required=True, metavar="FILE",
              help="The HTML file to write (one self-contained page: no network, no script).")
@click.option("--checkpoint", "checkpoint_file", type=click.Path(dir_okay=False, path_type=Path), default=None, metavar="FILE",
              help="As for verify: a signed checkpoint the ledger must extend.")
@click.option("--expect-genesis", "expect_genesis", default=None, metavar="FINGERPRINT",
              help="As for verify: the genesis fingerprint you hold.")
def report_command(directory: Path, output: Path, checkpoint_file: Path | None, expect_genesis: str | None) -> None:
    """Run the audit of `verify` and write it as one HTML page: ε per client over the
    rounds, quality per round, model lineage, rounds, every check, the trust notes.

    Exit 0 if every check passed, 1 if one failed (the page is written either way)."""
    from .audit import audit
    from .report import write_report

    trusted = _read_checkpoint(checkpoint_file)
    expected = _expected_genesis(expect_genesis, "--expect-genesis")
    result = audit(directory, trusted_checkpoint=trusted, expected_genesis=expected)
    try:
        write_report(result, output)
    except OSError as exc:
        _fail(f"cannot write -o {output}: {exc}", 2)
    verdict = "VERIFIED" if result.ok else f"FAILED ({result.report.error})"
    click.echo(f"{verdict}; report written to {output}")
    sys.exit(0 if result.ok else EXIT_VERIFICATION_FAILED)


def _open_ledger(directory: Path) -> Any:
    """The ledger in ``directory``, or a one-line usage error naming it."""
    from .ledger.errors import VerificationError
    from .ledger.store import DATABASE, Ledger

    if not (directory / DATABASE).is_file():
        _fail(f"{directory} holds no federation ledger ({DATABASE})", EXIT_USAGE)
    try:
        return Ledger.open(directory)
    except VerificationError as exc:
        _fail(f"{directory}: {exc}", EXIT_USAGE)


_LEDGER_DIRECTORY = click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))


@main.command("inspect")
@_LEDGER_DIRECTORY
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def inspect_command(directory: Path, as_json: bool) -> None:
    """Print a ledger's rounds, participants, budgets and balances."""
    from .ledger.errors import VerificationError
    from .ledger.inspect import print_summary, summary_record

    with _open_ledger(directory) as ledger:
        try:
            if as_json:
                click.echo(json.dumps(summary_record(ledger), sort_keys=True))
            else:
                print_summary(ledger, console())
        except VerificationError as exc:
            _fail(f"{directory}: {exc}", EXIT_USAGE)


@main.command("log")
@_LEDGER_DIRECTORY
@click.option("--round", "round_id", type=click.IntRange(0), default=None, help="Only this round's entries.")
@click.option("--client", default=None, metavar="ID", help="Only entries signed by this participant (e.g. hospital-03).")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line instead of text.")
def log_command(directory: Path, round_id: int | None, client: str | None, as_json: bool) -> None:
    """One line per ledger entry: index, block, round, type, author and gist."""
    from .ledger.inspect import located_entries

    with _open_ledger(directory) as ledger:
        for located in located_entries(ledger, round_id=round_id, author=client):
            click.echo(json.dumps(located.to_json(), sort_keys=True) if as_json else located.line())


@main.command("show")
@_LEDGER_DIRECTORY
@click.argument("entry_index", metavar="ENTRY", type=click.IntRange(0))
def show_command(directory: Path, entry_index: int) -> None:
    """Print one ledger entry (as ``log`` numbers them) as JSON, with its block and author."""
    from .ledger.errors import VerificationError
    from .ledger.inspect import locate_entry

    with _open_ledger(directory) as ledger:
        try:
            located = locate_entry(ledger, entry_index)
        except VerificationError as exc:
            _fail(f"{directory}: {exc}", EXIT_USAGE)
    click.echo(json.dumps(located.to_json(), indent=2, sort_keys=True, ensure_ascii=False))


@main.command("prove")
@_LEDGER_DIRECTORY
@click.option("--entry", "entry_index", type=click.IntRange(0), default=None, help="Inclusion proof of this log entry.")
@click.option("--client", default=None, metavar="ID", help="With --round: inclusion proof of this client's submission.")
@click.option("--round", "round_id", type=click.IntRange(1), default=None, help="With --client: the round of the submission.")
@click.option("--height", type=click.IntRange(0), default=None, help="Block whose checkpoint the inclusion proof is against (default: head).")
@click.option("--consistency", nargs=2, type=click.IntRange(0), default=None, metavar="OLD NEW", help="Consistency proof between two blocks' checkpoints.")
def prove_command(directory: Path, entry_index: int | None, client: str | None, round_id: int | None,
                  height: int | None, consistency: tuple[int, int] | None) -> None:
    """Print an RFC 9162 inclusion or consistency proof as JSON, with its signed checkpoints."""
    from .ledger.errors import VerificationError
    from .ledger.inspect import consistency_proof_record, inclusion_proof_record, submission_index

    if (client is None) != (round_id is None):
        _fail("--client and --round go together: the submission of CLIENT in ROUND", EXIT_USAGE)
    if sum(x is not None for x in (entry_index, client, consistency)) != 1:
        _fail("give exactly one of --entry INDEX, --client ID --round N, or --consistency OLD NEW", EXIT_USAGE)
    with _open_ledger(directory) as ledger:
        try:
            if client is not None:
                entry_index = submission_index(ledger, client, round_id)  # type: ignore[arg-type]
            if entry_index is not None:
                record = inclusion_proof_record(ledger, entry_index, height=height)
            else:
                record = consistency_proof_record(ledger, *consistency)  # type: ignore[misc]
        except VerificationError as exc:
            _fail(f"{directory}: {exc}", EXIT_USAGE)
    click.echo(json.dumps(record, indent=2, sort_keys=True))


@main.command("export-model")
@_LEDGER_DIRECTORY
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .safetensors file to write.")
@click.option("--round", "round_id", type=click.IntRange(0), default=None, help="The model in force after this round (default: the latest; 0: the initial model).")
def export_model_command(directory: Path, output: Path, round_id: int | None) -> None:
    """Write a federation's model as safetensors (torch state_dict names; README says how to load it)."""
    from .export import ExportError, export_model

    try:
        exported = export_model(directory, output, round_id=round_id)
    except ExportError as exc:
        _fail(str(exc), EXIT_USAGE)
    click.echo(f"wrote {output}: {exported.model} model after round {exported.round} "
               f"({exported.n_features} features, {exported.n_classes} classes, model {exported.model_cid})")


@main.command("check-proof")
@click.argument("record_file", type=click.File("rb"))
@click.option("--dir", "directory", type=click.Path(exists=True, file_okay=False, path_type=Path), required=True,
              help="Ledger directory whose genesis names the validators that must have signed the checkpoints.")
@click.option("--expect-genesis", "expect_genesis", default=None, metavar="FINGERPRINT",
              help="The genesis fingerprint (sha256:…) you hold: a directory with another genesis is refused.")
def check_proof_command(record_file, directory: Path, expect_genesis: str | None) -> None:
    """Check a proof from `bfl-private prove` against the validators DIR's genesis names.

    Exit 0: the proof holds; 1: it does not (or DIR's head is not certified by them);
    2: the record is not a proof record (not JSON, a field missing or of the wrong type)."""
    from .ledger.canonical import check_nesting
    from .ledger.errors import MalformedRecord, VerificationError
    from .ledger.inspect import check_proof, parse_proof_record

    expected = _expected_genesis(expect_genesis, "--expect-genesis")
    name = record_file.name
    try:
        data = record_file.read()
        check_nesting(data, where=f"{name}: not a JSON proof record")
        record = parse_proof_record(json.loads(data))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        _fail(f"{name}: not a JSON proof record: {type(exc).__name__}: {exc}", 2)
    except MalformedRecord as exc:
        _fail(f"{name}: {exc}", 2)
    try:
        statement = check_proof(record, directory, expected_genesis=expected)
    except VerificationError as exc:
        _fail(f"{name}: proof does not verify against {directory}: {type(exc).__name__}: {exc}",
              EXIT_VERIFICATION_FAILED)
    click.echo(statement)


if __name__ == "__main__":
    main()
