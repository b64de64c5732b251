"""bench_flower_deployment reads its figures off ``flwr run`` output correctly (no
deployment here: the bench itself runs one), and its baseline apps name modules that
their own folders hold (``flwr run`` packages only that folder)."""
from __future__ import annotations

import pytest
import tomllib

from bench.bench_flower_deployment import (
    APPS_DIR,
    AppRun,
    DeploymentBenchError,
    parse_baseline,
    parse_ours,
    rows_of,
    summarise,
)
from bench.report import flower_deployment_table

INFO = "\x1b[92mINFO \x1b[0m:      "


def _secagg_output(rounds: int) -> str:
    lines = []
    for r in range(1, rounds + 1):
        for stage, seconds in (("setup", 6.3), ("share-keys", 6.2), ("collect-masked-vectors", 9.4), ("unmask", 6.1)):
            lines.append(f"{INFO}bench-flower round {r}: stage {stage} in {seconds + r / 100:.4f} s")
        lines.append(f"{INFO}bench-flower round {r}: total {28.1 + r / 25:.4f} s")
    return "\n".join(lines + lines[-2:])  # flwr run may echo a line twice


def _our_output(rounds: int, *, answered: int = 5, status: str = "accepted") -> str:
    lines = []
    for r in range(1, rounds + 1):
        for stage in ("advertise", "share", "mask", "acknowledge", "unmask"):
            lines.append(f"{INFO}bfl-private round {r}: stage {stage} answered by {answered} of 5 in 1.50 s")
        lines.append(f"{INFO}bfl-private round {r}: {status}, survivors 5, dropouts [], {10.0 + r:.2f} s")
    return "\n".join(lines)


def test_baseline_rounds_and_stages() -> None:
    run = parse_baseline("flower-secagg+", _secagg_output(3), 3, wall=100.0)
    assert run.rounds == pytest.approx([28.14, 28.18, 28.22])
    assert run.stages[1]["collect-masked-vectors"] == pytest.approx(9.42)
    summary = summarise(run)
    assert summary["exchanges"] == 4
    assert summary["round_s"] == pytest.approx(28.2)
    assert summary["round_min_s"] == pytest.approx(28.18)
    assert list(summary["stages"]) == ["setup", "share-keys", "collect-masked-vectors", "unmask", "other"]
    assert sum(s["mean_s"] for s in summary["stages"].values()) == pytest.approx(summary["round_s"], abs=0.01)
    assert summary["outside_rounds_s"] == pytest.approx(100.0 - 84.54, abs=0.1)


def test_missing_round_or_halted_workflow_is_an_error() -> None:
    with pytest.raises(DeploymentBenchError, match="ran 4"):
        parse_baseline("flower-secagg+", _secagg_output(3), 4, wall=1.0)
    with pytest.raises(DeploymentBenchError, match="halted"):
        parse_baseline("flower-secagg+", _secagg_output(2) + f"\n{INFO}Secure aggregation halted.", 2, wall=1.0)


def test_ours_rounds_stages_and_refusals() -> None:
    run = parse_ours(_our_output(3), 3, wall=60.0)
    assert run.rounds == [11.0, 12.0, 13.0]
    assert summarise(run)["exchanges"] == 5
    with pytest.raises(DeploymentBenchError, match="missed a stage"):
        parse_ours(_our_output(2, answered=4), 2, wall=1.0)
    with pytest.raises(DeploymentBenchError, match="aborted"):
        parse_ours(_our_output(2, status="aborted"), 2, wall=1.0)


def test_rows_ratio_to_flower_secagg_and_table() -> None:
    runs = {"fedavg": AppRun("fedavg", [9.0, 6.0, 6.2], [{"train": 8.9}, {"train": 5.9}, {"train": 6.1}], 30.0),
            "flower-secagg+": parse_baseline("flower-secagg+", _secagg_output(3), 3, wall=100.0),
            "ours": parse_ours(_our_output(3), 3, wall=60.0)}
    rows = rows_of(runs, {"vectors": 1}, 31, timed=2)
    ratios = {r["app"]: r["ratio"] for r in rows}
    assert ratios["flower-secagg+"] == 1.0
    assert ratios["ours"] == pytest.approx(12.5 / 28.2, abs=1e-3)
    table = flower_deployment_table({"suites": {"flower_deployment": {"rows": rows}}})
    assert table.count("\n") == 1 + len(rows)
    assert "collect-masked-vectors 9.43" in table


@pytest.mark.parametrize("folder", ["fedavg", "secaggplus"])
def test_baseline_apps_name_modules_in_their_folder(folder: str) -> None:
    project = tomllib.loads((APPS_DIR / folder / "pyproject.toml").read_text())
    for reference in project["tool"]["flwr"]["app"]["components"].values():
        module = reference.split(":")[0]
        assert (APPS_DIR / folder / f"{module}.py").exists(), reference
