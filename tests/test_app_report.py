"""`bfl-private report DIR -o audit.html`: the audit as one self-contained page, checked
in a real headless Chromium (tests/browser: @sparticuz/chromium driven by puppeteer-core)."""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import pytest
from bfl_private.ledger.store import DATABASE
from click.testing import CliRunner

from bfl_private.audit import AuditReport, FederationSummary, audit
from bfl_private.cli import main
from bfl_private.report import render_report
from bfl_private.runner import RoundOptions, run_command

BROWSER_DIR = Path(__file__).parent / "browser"
XSS = '<script>alert("x")</script><img src=x onerror="alert(1)">'


def browser_missing() -> str | None:
    """Why the headless browser cannot run here, or None when it can."""
    if shutil.which("node") is None:
        return "node is not installed"
    if not (BROWSER_DIR / "node_modules" / "@sparticuz" / "chromium").is_dir():
        return "headless Chromium not installed (make test runs npm ci --prefix tests/browser)"
    return None


@pytest.fixture(scope="session")
def browser() -> None:
    reason = browser_missing()
    if reason is not None:
        if os.environ.get("BFL_REQUIRE_BROWSER") == "1":
            pytest.fail(f"BFL_REQUIRE_BROWSER=1 but {reason}")
        pytest.skip(reason)


def open_in_chromium(page: Path) -> dict:
    """What the browser saw loading ``page`` (see tests/browser/check_page.mjs)."""
    unpack = BROWSER_DIR / "node_modules" / ".chromium-tmp"  # the binary is unpacked here once
    unpack.mkdir(exist_ok=True)
    done = subprocess.run(["node", str(BROWSER_DIR / "check_page.mjs"), str(page)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "TMPDIR": str(unpack)}, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def federation(tmp_path_factory) -> Path:
    """Plain mode with a malicious client (a rejection with its reason) and dropouts."""
    directory = tmp_path_factory.mktemp("report") / "fed"
    run_command(directory, RoundOptions(epsilon=1.0, clients=5, rounds=3, seed=5, protocol="plain",
                                        malicious=1, dropout=0.1), quiet=True)
    return directory


class Elements(HTMLParser):
    """Tags and text of a page, to check it without a browser."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def test_the_page_shows_exactly_what_the_audit_established(federation: Path, tmp_path: Path) -> None:
    page = tmp_path / "audit.html"
    result = CliRunner().invoke(main, ["report", str(federation), "-o", str(page)])
    assert result.exit_code == 0 and "VERIFIED" in result.output, result.output
    verified = audit(federation)
    summary = verified.summary
    html = page.read_text(encoding="utf-8")
    parsed = Elements(html)
    text = " ".join(" ".join(parsed.text).split())
    assert "script" not in parsed.tags and "://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert parsed.tags.count("svg") == 2
    anchor = verified.report.anchor
    for fact in (anchor.federation_id, anchor.genesis_fingerprint, anchor.head.root,
                 *(v.key_id for v in anchor.validators)):
        assert fact in text
    for check in verified.report.checks:
        assert f"{check.number} {check.name} OK {check.detail}" in text
    for note in verified.report.notes:
        assert " ".join(note.split()) in text
    rejected = [(r.round, c, reason) for r in summary.rounds for c, reason in r.rejected]
    assert rejected, "the fixture has a rejected submission"
    for number, client, reason in rejected:
        assert f"{client}: {reason}" in text
    for r in summary.rounds:
        assert f"{r.round} {r.protocol} {r.outcome}" in text
        assert r.model_cid in text and (r.new_model_cid is None or r.new_model_cid in text)
    for c in summary.clients:
        assert f"{c.id} {c.epsilon:.4f} {c.budget:g} {c.data_weight} {c.balance}" in text


def test_summary_round_trips_through_json(federation: Path) -> None:
    summary = audit(federation).summary
    assert FederationSummary.from_json(json.loads(json.dumps(summary.to_json()))) == summary
    # Its rounds are the contracts' outcomes joined with the entries that made them.
    for r in summary.rounds:
        assert set(r.survivors) | set(r.dropouts) | {c for c, _ in r.rejected} == set(r.participants)
        assert (r.model_cid == r.new_model_cid) == (r.outcome == "accepted")


def test_a_failed_audit_still_writes_a_page_with_the_failure_and_no_figures(federation: Path, tmp_path: Path) -> None:
    copy = tmp_path / "fed"
    shutil.copytree(federation, copy)
    db = sqlite3.connect(copy / DATABASE)
    with db:
        db.execute("DELETE FROM cosignatures WHERE height = 1")
    db.close()
    page = tmp_path / "audit.html"
    result = CliRunner().invoke(main, ["report", str(copy), "-o", str(page)])
    assert result.exit_code == 1 and "FAILED" in result.output
    text = " ".join(" ".join(Elements(page.read_text(encoding="utf-8")).text).split())
    assert "FAILED: check 5 (quorum certificates) failed, block 1" in text
    assert "5 quorum certificates FAIL block 1 QuorumError" in text and "6 blob CIDs not run" in text
    assert "Not shown: figures are drawn only from a ledger in which every check passed" in text
    assert "<svg" not in page.read_text(encoding="utf-8")


def test_report_refuses_bad_options_in_one_line(federation: Path, tmp_path: Path) -> None:
    bad = CliRunner().invoke(main, ["report", str(federation), "-o", str(tmp_path / "a.html"),
                                    "--expect-genesis", "nope"])
    assert bad.exit_code == 2 and bad.output.startswith("error: ") and "Traceback" not in bad.output
    unwritable = CliRunner().invoke(main, ["report", str(federation), "-o", str(tmp_path / "no" / "a.html")])
    assert unwritable.exit_code == 2 and "Traceback" not in unwritable.output
    assert not (tmp_path / "a.html").exists()


def hostile(result: AuditReport) -> AuditReport:
    """The same audit with every ledger-supplied string replaced by markup: client ids,
    reasons, protocol, CIDs, the directory name, a check's detail and a note."""
    summary = result.summary
    rename = {c.id: f"{c.id}{XSS}" for c in summary.clients}
    rounds = tuple(dataclasses.replace(
        r, protocol=r.protocol + XSS, survivors=tuple(rename[c] for c in r.survivors),
        dropouts=tuple(rename[c] for c in r.dropouts),
        rejected=tuple((rename[c], reason + XSS) for c, reason in r.rejected) or ((XSS, XSS),),
        epsilon=tuple((rename[c], e) for c, e in r.epsilon), model_cid=(r.model_cid or "") + XSS)
        for r in summary.rounds)
    clients = tuple(dataclasses.replace(c, id=rename[c.id]) for c in summary.clients)
    report = dataclasses.replace(result.report, directory=XSS, notes=[*result.report.notes, XSS])
    report.checks[0] = dataclasses.replace(report.checks[0], detail=XSS)
    return AuditReport(report, dataclasses.replace(summary, rounds=rounds, clients=clients))


def test_ledger_strings_are_escaped(federation: Path) -> None:
    html = render_report(hostile(audit(federation)))
    assert "<script" not in html and "<img" not in html
    assert html.count("&lt;script&gt;") >= 10


@pytest.mark.slow
def test_the_page_renders_in_headless_chromium(browser, federation: Path, tmp_path: Path) -> None:
    """Loads offline with no console message, no error, no request; both plots are drawn;
    hostile ledger strings show as text and run nothing."""
    page = tmp_path / "audit.html"
    assert CliRunner().invoke(main, ["report", str(federation), "-o", str(page)]).exit_code == 0
    seen = open_in_chromium(page)
    assert (seen["console"], seen["errors"], seen["dialogs"], seen["requests"]) == ([], [], [], [])
    assert seen["dom"]["scripts"] == 0
    summary = audit(federation).summary
    charts = {svg["id"]: svg for svg in seen["dom"]["svgs"]}
    assert set(charts) == {"epsilon-chart", "quality-chart"}
    for chart in charts.values():
        assert chart["width"] > 300 and chart["height"] > 200 and chart["pathLength"] > 100
    budgets = {c.budget for c in summary.clients}
    assert charts["epsilon-chart"]["paths"] == len(summary.clients) + len(budgets)
    # One marker per client per point (round 0 and every round), one per attestation.
    assert charts["epsilon-chart"]["circles"] == len(summary.clients) * (len(summary.rounds) + 1)
    accepted = [r for r in summary.rounds if r.quality_ppm is not None]
    attestations = sum(len(r.attestations) for r in summary.rounds)
    assert charts["quality-chart"]["circles"] == attestations + len(accepted)

    hostile_page = tmp_path / "hostile.html"
    hostile_page.write_text(render_report(hostile(audit(federation))), encoding="utf-8")
    seen = open_in_chromium(hostile_page)
    assert (seen["console"], seen["errors"], seen["dialogs"], seen["requests"]) == ([], [], [], [])
    assert seen["dom"]["scripts"] == 0 and XSS in seen["dom"]["text"]
    assert len(seen["dom"]["svgs"]) == 2
