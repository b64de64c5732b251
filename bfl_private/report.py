"""``bfl-private report DIR -o audit.html``: the audit as one self-contained HTML page.

The page shows exactly what :func:`bfl_private.audit.audit` established, nothing it
re-derives: what the run was anchored to, every numbered check with its result, and,
only when every check passed, the federation's verified history (each client's
cumulative ε over the rounds, the validators' quality figures per round, the model
lineage, each round's protocol, survivors, dropouts and rejections), then the trust
notes. A failed audit still produces a page, with the failure and no figures.

Self-contained and inert: the plots are SVG drawn here, styles are inline, there is no
script at all, and a Content-Security-Policy forbids scripts and any network fetch, so
the file can be archived with the evidence and opened offline. Every string that comes
from the ledger or the command line (client ids, reasons, CIDs, paths, error messages)
goes through :func:`html.escape`.
"""
from __future__ import annotations

import html
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .audit import AuditReport, FederationSummary
from .ledger.contracts import PPM

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
           "#17becf", "#7f7f7f", "#bcbd22")
WIDTH, HEIGHT = 780, 320
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 60, 200, 20, 45
_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1000px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; font-size: .9em; }
th, td { border: 1px solid #ccc; padding: .25em .5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
.ok { color: #127a12; font-weight: bold; } .fail { color: #b00; font-weight: bold; }
.notrun { color: #888; } code, .cid { font-family: ui-monospace, monospace; font-size: .85em; word-break: break-all; }
.verdict { font-size: 1.3em; padding: .4em .8em; display: inline-block; border-radius: 4px; }
.verdict.ok { background: #e6f4e6; } .verdict.fail { background: #fbe9e9; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2em 1em; }
dt { font-weight: bold; } dd { margin: 0; }
svg { background: #fff; border: 1px solid #ddd; }
"""


def _e(value: object) -> str:
    """Text or attribute value from anywhere but this module: escaped, quotes included."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Series:
    """One line (or set of markers) of a chart."""

    name: str
    points: tuple[tuple[float, float], ...]
    colour: str
    line: bool = True
    dashed: bool = False


def _ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten apart) in
    [low, high]."""
    if high <= low:
        return [low]
    raw = (high - low) / count
    magnitude = 10.0 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step - 1e-9)
    last = math.floor(high / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def line_chart(series: Sequence[Series], *, chart_id: str, title: str, x_label: str,
               y_label: str, y_range: tuple[float, float], x_range: tuple[float, float]) -> str:
    """An SVG line chart: axes with ticks, one path per line series, circles for markers,
    a legend on the right. Names are escaped; coordinates are numbers formatted here."""
    x0, x1 = x_range
    y0, y1 = y_range
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM

    def sx(x: float) -> float:
        return MARGIN_LEFT + (x - x0) / ((x1 - x0) or 1) * plot_w

    def sy(y: float) -> float:
        return MARGIN_TOP + plot_h - (y - y0) / ((y1 - y0) or 1) * plot_h

    parts = [(f'<svg id="{_e(chart_id)}" xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" '
              f'height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
              f'aria-label="{_e(title)}"><title>{_e(title)}</title>'),
             (f'<rect class="plot-area" x="{MARGIN_LEFT}" y="{MARGIN_TOP}" width="{plot_w}" '
              f'height="{plot_h}" fill="#fafafa" stroke="#999"/>')]
    for y in _ticks(y0, y1):
        parts.append(f'<line x1="{MARGIN_LEFT}" x2="{MARGIN_LEFT + plot_w}" y1="{sy(y):.1f}" '
                     f'y2="{sy(y):.1f}" stroke="#e4e4e4"/>'
                     f'<text x="{MARGIN_LEFT - 6}" y="{sy(y) + 4:.1f}" font-size="11" '
                     f'text-anchor="end">{y:g}</text>')
    for x in _ticks(x0, x1, count=min(10, max(1, int(x1 - x0)))):
        if float(x).is_integer():
            parts.append(f'<text x="{sx(x):.1f}" y="{MARGIN_TOP + plot_h + 16}" font-size="11" '
                         f'text-anchor="middle">{int(x)}</text>')
    parts.append(f'<text x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 8}" font-size="12" '
                 f'text-anchor="middle">{_e(x_label)}</text>'
                 f'<text x="14" y="{MARGIN_TOP + plot_h / 2:.1f}" font-size="12" '
                 f'text-anchor="middle" transform="rotate(-90 14 {MARGIN_TOP + plot_h / 2:.1f})">'
                 f'{_e(y_label)}</text>')
    for number, s in enumerate(series):
        if s.line and s.points:
            d = " ".join(f"{'M' if i == 0 else 'L'}{sx(x):.1f},{sy(y):.1f}"
                         for i, (x, y) in enumerate(s.points))
            dash = ' stroke-dasharray="6 4"' if s.dashed else ""
            parts.append(f'<path class="series" d="{d}" fill="none" stroke="{s.colour}" '
                         f'stroke-width="2"{dash}><title>{_e(s.name)}</title></path>')
        if not s.dashed:
            for x, y in s.points:
                parts.append(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{s.colour}">'
                             f'<title>{_e(s.name)}: {y:.4g} at {x:g}</title></circle>')
        legend_y = MARGIN_TOP + 12 + 16 * number
        if legend_y < HEIGHT - 10:
            parts.append(f'<rect x="{WIDTH - MARGIN_RIGHT + 12}" y="{legend_y - 9}" width="12" '
                         f'height="10" fill="{s.colour}"/><text x="{WIDTH - MARGIN_RIGHT + 30}" '
                         f'y="{legend_y}" font-size="11">{_e(s.name[:24])}</text>')
    parts.append("</svg>")
    return "".join(parts)


def epsilon_chart(summary: FederationSummary) -> str:
    """Each client's cumulative ε after every round (carried over the rounds it sat out),
    against the lifetime budgets."""
    last = summary.rounds[-1].round if summary.rounds else 1
    series = []
    for number, client in enumerate(summary.clients):
        points, spent = [(0.0, 0.0)], 0.0
        for r in summary.rounds:
            spent = dict(r.epsilon).get(client.id, spent)
            points.append((float(r.round), spent))
        series.append(Series(client.id, tuple(points), PALETTE[number % len(PALETTE)]))
    for budget in sorted({c.budget for c in summary.clients}):
        series.append(Series(f"budget {budget:g}", ((0.0, budget), (float(last), budget)),
                             "#555", dashed=True))
    top = max([c.budget for c in summary.clients] + [c.epsilon for c in summary.clients] + [1e-9])
    return line_chart(series, chart_id="epsilon-chart", title="Cumulative ε per client",
                      x_label="round", y_label="cumulative ε", y_range=(0.0, top * 1.05),
                      x_range=(0.0, float(last)))


def quality_chart(summary: FederationSummary) -> str:
    """The accepted model's quality per round (median accepting figure) and each
    validator's own figure, as attested (accuracy on its held-out data)."""
    accepted = tuple((float(r.round), r.quality_ppm / PPM) for r in summary.rounds
                     if r.quality_ppm is not None)
    validators = sorted({a.validator for r in summary.rounds for a in r.attestations})
    series = [Series("accepted model (median)", accepted, "#000")]
    for number, name in enumerate(validators):
        points = tuple((float(r.round), a.quality_ppm / PPM) for r in summary.rounds
                       for a in r.attestations if a.validator == name)
        series.append(Series(name, points, PALETTE[number % len(PALETTE)], line=False))
    values = [y for s in series for _, y in s.points] or [0.0, 1.0]
    low = max(0.0, min(values) - 0.05)
    first = summary.rounds[0].round if summary.rounds else 0
    last = summary.rounds[-1].round if summary.rounds else 1
    return line_chart(series, chart_id="quality-chart", title="Model quality per round",
                      x_label="round", y_label="accuracy (validators' held-out data)",
                      y_range=(low, 1.0), x_range=(float(first) - 0.5 if first == last else float(first), float(last)))


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], *, table_id: str) -> str:
    """A table whose cells are already HTML (callers escape what they put in)."""
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _names(names: Sequence[str]) -> str:
    return _e(", ".join(names)) if names else "–"


def _anchor_section(result: AuditReport) -> str:
    anchor = result.report.anchor
    if anchor is None:
        return "<p>Not anchored: the checks that establish genesis and head did not pass.</p>"
    pinned = ("pinned (matches --expect-genesis)" if anchor.genesis_pinned
              else "trusted as received")
    validators = ", ".join(f"{_e(v.id)} <code>{_e(v.key_id)}</code>" for v in anchor.validators)
    rows = [("federation", _e(anchor.federation_id)),
            ("genesis fingerprint", f'<span class="cid">{_e(anchor.genesis_fingerprint)}</span> ({pinned})'),
            ("validators", f"quorum {anchor.quorum} of {len(anchor.validators)}: {validators}"),
            ("head checkpoint", (f"block {anchor.head.height}, tree size {anchor.head.size}, "
                                 f'root <span class="cid">{_e(anchor.head.root)}</span>'))]
    if anchor.trusted_size is not None:
        rows.append(("extends pinned checkpoint",
                     (f"tree size {anchor.trusted_size}, root "
                      f'<span class="cid">{_e(anchor.trusted_root)}</span>')))
    return '<dl id="anchor">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def _checks_table(result: AuditReport) -> str:
    rows = []
    for c in result.report.checks:
        label = {"passed": '<span class="ok">OK</span>', "failed": '<span class="fail">FAIL</span>'
                 }.get(c.status, '<span class="notrun">not run</span>')
        where = ", ".join(f"{k} {v}" for k, v in (("block", c.block), ("entry", c.entry)) if v is not None)
        detail = _e(f"{c.error_type}: {c.detail}" if c.error_type else c.detail)
        rows.append((str(c.number), _e(c.name), label, _e(where) or "", detail))
    return _table(("#", "check", "result", "where", "detail"), rows, table_id="checks")


def _lineage(summary: FederationSummary) -> str:
    items = [f'<li>genesis: initial model <span class="cid">{_e(summary.initial_model_cid or "none")}</span></li>']
    for r in summary.rounds:
        if r.new_model_cid is None:
            items.append(f"<li>round {r.round} ({_e(r.outcome)}): model stays "
                         f'<span class="cid">{_e(r.model_cid or "none")}</span></li>')
        else:
            kept = "adopted" if r.model_cid == r.new_model_cid else "not adopted; model stays " \
                f'<span class="cid">{_e(r.model_cid or "none")}</span>'
            items.append(f"<li>round {r.round} ({_e(r.outcome)}): from "
                         f'<span class="cid">{_e(r.base_model_cid or "none")}</span> to '
                         f'<span class="cid">{_e(r.new_model_cid)}</span>, {kept}</li>')
    return '<ol id="lineage">' + "".join(items) + "</ol>"


def _rounds_table(summary: FederationSummary) -> str:
    rows = []
    for r in summary.rounds:
        rejected = "; ".join(f"{c}: {reason}" for c, reason in r.rejected) or "–"
        quality = "–" if r.quality_ppm is None else f"{r.quality_ppm / PPM:.4f}"
        rows.append((str(r.round), _e(r.protocol), _e(r.outcome + (f" ({r.abort})" if r.abort else "")),
                     str(len(r.participants)), _names(r.survivors), _names(r.dropouts),
                     _e(rejected), quality, str(r.minted)))
    return _table(("round", "protocol", "outcome", "participants", "survivors", "dropouts",
                   "rejected (reason)", "quality", "minted"), rows, table_id="rounds")


def _clients_table(summary: FederationSummary) -> str:
    rows = [(_e(c.id), f"{c.epsilon:.4f}", f"{c.budget:g}", str(c.data_weight), str(c.balance))
            for c in summary.clients]
    return _table(("client", "cumulative ε", "budget", "declared records", "balance"), rows,
                  table_id="clients")


def render_report(result: AuditReport) -> str:
    """The whole page for one audit result."""
    report = result.report
    title = f"Audit of {report.directory}"
    if result.ok:
        verdict = '<p class="verdict ok" id="verdict">VERIFIED: every check passed.</p>'
    else:
        verdict = (f'<p class="verdict fail" id="verdict">FAILED: {_e(report.error)}</p>')
    sections = [f"<h1>{_e(title)}</h1>", verdict, "<h2>Checked against</h2>", _anchor_section(result),
                "<h2>Checks</h2>", _checks_table(result)]
    summary = result.summary
    if summary is None:
        sections.append("<h2>History</h2><p>Not shown: figures are drawn only from a ledger in "
                        "which every check passed.</p>")
    elif not summary.rounds:
        sections.append("<h2>History</h2><p>No round has finished yet.</p>")
    else:
        sections += ["<h2>Privacy spent</h2>", epsilon_chart(summary),
                     "<h2>Model quality</h2>", quality_chart(summary),
                     "<h2>Rounds</h2>", _rounds_table(summary),
                     "<h2>Clients</h2>", _clients_table(summary),
                     "<h2>Model lineage</h2>", _lineage(summary)]
    notes = "".join(f"<li>{_e(n)}</li>" for n in report.notes)
    sections += ["<h2>What the ledger cannot prove</h2>", f'<ul id="notes">{notes}</ul>']
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
            f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>"
            + "\n".join(sections) + "</body></html>\n")


def write_report(result: AuditReport, output: Path) -> None:
    """Write the page to ``output`` atomically (a temporary file beside it, then rename)."""
    output = Path(output)
    fd, temporary = tempfile.mkstemp(prefix=".report-", suffix=".html", dir=output.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(render_report(result))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp's 0600 would hide it from co-auditors
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
