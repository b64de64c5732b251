"""``bfl-private``: run private federated rounds, and let anyone verify the ledger.

Heavy machinery (torch, Opacus, TenSEAL) is imported inside the commands that need it,
so ``bfl-private verify`` starts fast and works where torch is missing.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
from rich.console import Console

from .settings import PROTOCOLS

EXIT_REFUSED = 3
EXIT_VERIFICATION_FAILED = 1
EXIT_CHAIN = 4


def _fail(message: str, code: int) -> None:
    Console(stderr=True).print(f"[bold red]error:[/] {message}", highlight=False)
    sys.exit(code)


@click.group()
@click.version_option(package_name="bfl-private")
def main() -> None:
    """Private, auditable federated learning."""


@main.command("round")
@click.option("--epsilon", type=float, default=None, help="Privacy budget (ε) this command may spend per client.")
@click.option("--rounds", type=click.IntRange(1, 1000), default=None, help="Rounds to run in this command.")
@click.option("--clients", type=click.IntRange(2, 1000), default=None, help="Clients (at genesis only).")
@click.option("--dataset", type=click.Choice(["breast_cancer", "digits"]), default=None, help="Dataset (at genesis only).")
@click.option("--model", type=click.Choice(["logreg", "mlp"]), default=None, help="Model (at genesis only).")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None, help="Aggregation protocol (default: masking).")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=Path("bfl-ledger"), show_default=True, help="The federation's directory.")
@click.option("--budget", type=click.FloatRange(0.0, min_open=True), default=None, help="Lifetime ε budget per client (at genesis only; default 3.0).")
@click.option("--seed", type=int, default=None, help="Seed of the demo data split and initial model only (at genesis; public). DP noise and sampling never depend on it: they come from fresh OS randomness every round.")
@click.option("--dropout", type=click.FloatRange(0.0, 1.0), default=0.0, show_default=True, help="Probability that a client vanishes at a random stage.")
@click.option("--malicious", type=click.IntRange(0, 1000), default=0, show_default=True, help="Clients that submit a garbage update (demo).")
@click.option("--skip-exhausted", is_flag=True, help="Leave out clients whose budget cannot afford the round instead of refusing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
@click.option("--chain", "chain_url", default=None, metavar="URL", help="Then anchor every block and post ε and rewards on the EVM node at URL (chain extra).")
def round_command(**options: object) -> None:
    """Run federated rounds; create the federation in --dir first if it is new."""
    from .runner import RoundOptions, RunRefused, run_command  # torch lives behind this import

    directory: Path = options.pop("directory")  # type: ignore[assignment]
    as_json: bool = options.pop("as_json")  # type: ignore[assignment]
    chain_url: str | None = options.pop("chain_url")  # type: ignore[assignment]
    if options["epsilon"] is None:
        _fail("give --epsilon E: the privacy budget (ε) this command may spend per client", 2)
    if not options["epsilon"] > 0:  # type: ignore[operator]
        _fail(f"--epsilon must be > 0, got {options['epsilon']}", 2)
    if directory.exists() and not directory.is_dir():
        _fail(f"--dir {directory} exists and is not a directory", 2)
    try:
        report = run_command(directory, RoundOptions(**options), quiet=as_json)  # type: ignore[arg-type]
    except RunRefused as exc:
        _fail(str(exc), EXIT_REFUSED)
    except PermissionError as exc:
        _fail(f"cannot use --dir {directory}: {exc}", 2)
    anchored = None if chain_url is None else _sync_chain(directory, chain_url)
    if as_json:
        click.echo(json.dumps({**report.to_json(), **({"chain": anchored} if anchored else {})},
                              sort_keys=True))
    else:
        report.print(Console())
        if anchored:
            Console().print(f"Anchored on chain {anchored['chain_id']}: contract {anchored['contract']}, "
                            f"blocks {anchored['anchored']}, rounds settled {anchored['settled']}, "
                            f"gas {anchored['gas']}", highlight=False)


def _sync_chain(directory: Path, url: str) -> dict[str, object] | None:
    """Anchor the ledger's new blocks on the EVM node at ``url`` (the rounds stay recorded
    if this fails; the next ``round --chain`` catches up). Exits on failure."""
    from .ledger.errors import VerificationError

    try:
        from .chain_sync import sync
    except ImportError as exc:
        _fail(f"--chain needs the chain extra (pip install 'bfl-private[chain]'): {exc}", 2)
        return None
    from .keyring import KeyringError

    try:
        return sync(directory, url).to_json()
    except (VerificationError, KeyringError) as exc:
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

    Reads DIR read-only and writes nothing into it (works on read-only media)."""
    from .audit import audit
    from .ledger.errors import VerificationError

    if contract is not None and chain_url is None:
        _fail("--contract needs --chain URL", 2)
    trusted = _read_checkpoint(checkpoint_file)
    expected = _expected_genesis(expect_genesis, "--expect-genesis")
    try:
        report = audit(directory, trusted_checkpoint=trusted, expected_genesis=expected,
                       chain_url=chain_url, contract=contract)
    except ImportError as exc:
        _fail(f"--chain needs the chain extra (pip install 'bfl-private[chain]'): {exc}", 2)
    except VerificationError as exc:
        _fail(f"chain {chain_url}: {type(exc).__name__}: {exc}", EXIT_VERIFICATION_FAILED)
    if as_json:
        click.echo(json.dumps(report.to_json(), sort_keys=True))
    else:
        report.print(Console())
    if save_checkpoint is not None and report.ok and report.report.anchor is not None:
        try:
            save_checkpoint.write_text(report.report.anchor.head_note, encoding="utf-8")
        except OSError as exc:
            _fail(f"cannot write --save-checkpoint {save_checkpoint}: {exc}", 2)
        if not as_json:
            click.echo(f"Head checkpoint saved to {save_checkpoint}: give it as --checkpoint next time.")
    sys.exit(0 if report.ok else EXIT_VERIFICATION_FAILED)


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


@main.command("inspect")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
def inspect_command(directory: Path) -> None:
    """Print a ledger's rounds, participants, budgets and balances."""
    from .ledger.errors import VerificationError
    from .ledger.inspect import print_summary
    from .ledger.store import Ledger

    try:
        with Ledger.open(directory) as ledger:
            print_summary(ledger, Console())
    except VerificationError as exc:
        _fail(f"{directory}: {exc}", 2)


@main.command("prove")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--entry", "entry_index", type=click.IntRange(0), default=None, help="Inclusion proof of this log entry.")
@click.option("--height", type=click.IntRange(0), default=None, help="Block whose checkpoint the inclusion proof is against (default: head).")
@click.option("--consistency", nargs=2, type=click.IntRange(0), default=None, metavar="OLD NEW", help="Consistency proof between two blocks' checkpoints.")
def prove_command(directory: Path, entry_index: int | None, height: int | None, consistency: tuple[int, int] | None) -> None:
    """Print an RFC 9162 inclusion or consistency proof as JSON, with its signed checkpoints."""
    from .ledger.errors import VerificationError
    from .ledger.inspect import consistency_proof_record, inclusion_proof_record
    from .ledger.store import Ledger

    if (entry_index is None) == (consistency is None):
        _fail("give exactly one of --entry INDEX or --consistency OLD NEW", 2)
    try:
        with Ledger.open(directory) as ledger:
            if entry_index is not None:
                record = inclusion_proof_record(ledger, entry_index, height=height)
            else:
                record = consistency_proof_record(ledger, *consistency)  # type: ignore[misc]
    except VerificationError as exc:
        _fail(f"{directory}: {exc}", 2)
    click.echo(json.dumps(record, indent=2, sort_keys=True))


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
