"""The congruence study's report: tables, ECDF plots and the raw samples.

``write_report`` turns a study's samples (``marionet.evaluate.samples``)
into one directory a reader can open without marionet:

* ``report.md`` and ``report.html`` — the same content (the HTML is
  self-contained: CSS inline, plots embedded): a header (title, date, the
  caller's ``meta``, the machine), then per experiment a table shaped like
  PAM'25's Tables 2 and 3 (one row per VP, param and compared source:
  reference mean, source mean, error abs and rel, C1 ●/○, KS D, p, C2 ●/○;
  for set experiments Jaccard and C3 ●/○; truth and errors against it when
  known), a summary line per source and the reasons of any undetermined
  criterion (– in the table);
* ``ecdf-<experiment>.png`` per numeric experiment — one panel per VP (or
  per (VP, param), or per param: ``ExperimentSpec.panels``), one line per
  source, a dashed vertical line at the truth, in the style of Figs. 2 and
  3. Each panel is 400 × 300 px in a grid of at most 3 columns, so the
  image size tells the panel layout;
* ``samples.parquet`` — exactly the Sample columns, typed;
* ``comparisons.json`` — every ``Comparison.to_dict()`` with the specs.

Why documents are built once as blocks and rendered twice: the Markdown and
the HTML page must not drift apart. matplotlib (Agg, no pyplot state) and
pyarrow are imported inside the functions, so headless machines and
``import marionet.evaluate`` stay light.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import platform
import re
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from .criteria import Comparison, _json_ready, _truth_for, compare, default_c1_threshold
from .samples import COLUMNS, Sample

__all__ = ["ExperimentSpec", "ReportFiles", "write_report", "write_samples_parquet",
           "PANEL_PX", "PANEL_COLUMNS"]

#: one ECDF panel's size in pixels (width, height), and the grid's columns
PANEL_PX = (400, 300)
PANEL_COLUMNS = 3
_DPI = 100
_PANELS = ("vp", "vp-param", "param")

PASS, FAIL, UNDETERMINED = "●", "○", "–"


@dataclass(frozen=True)
class ExperimentSpec:
    """How one experiment is compared and shown.

    ``panels``: ``"vp"`` (params pooled), ``"vp-param"`` or ``"param"``
    (VPs pooled, e.g. the send gap's spacings); None chooses ``"vp-param"``
    when the experiment has params, else ``"vp"``.
    """
    name: str
    title: str
    metric: str
    reference: str
    kind: str = "numeric"
    threshold: float | None = None
    truth: Mapping[Any, float] | None = None
    unit: str = "ms"
    params_order: Sequence[str] | None = None
    panels: str | None = None
    xlabel: str | None = None     # the plots' x axis; default "<title> (<unit>)"

    def __post_init__(self) -> None:
        if self.kind not in ("numeric", "set"):
            raise ValueError(f"{self.name}: kind must be 'numeric' or 'set', not {self.kind!r}")
        if self.panels is not None and self.panels not in _PANELS:
            raise ValueError(f"{self.name}: panels must be one of {_PANELS}, not {self.panels!r}")
        if self.truth is not None and not isinstance(self.truth, Mapping):
            raise ValueError(f"{self.name}: truth must be a mapping (vp, param) -> value or vp -> value")
        for f in ("name", "metric", "reference"):
            if not isinstance(getattr(self, f), str) or not getattr(self, f):
                raise ValueError(f"ExperimentSpec.{f} must be a non-empty string")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.truth is not None:
            d["truth"] = [{"key": list(k) if isinstance(k, tuple) else k, "value": v}
                          for k, v in self.truth.items()]
        d["params_order"] = list(self.params_order) if self.params_order else None
        return _json_ready(d)


@dataclass(frozen=True)
class ReportFiles:
    """What ``write_report`` wrote. ``panels``: per plotted experiment, the
    panel titles in grid order (row by row)."""
    out_dir: Path
    markdown: Path
    html: Path
    parquet: Path
    comparisons: Path
    plots: dict[str, Path] = field(default_factory=dict)
    panels: dict[str, list[str]] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# formatting

def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or not math.isfinite(x):
        return UNDETERMINED
    a = abs(x)
    if a >= 1000:
        return f"{x:.0f}"
    if a >= 100:
        return f"{x:.1f}"
    if a == 0:
        return "0"
    if a >= 1:
        return f"{x:.{digits}f}"
    return f"{x:.{digits}g}"


def _pct(x: float | None) -> str:
    return UNDETERMINED if x is None or not math.isfinite(x) else f"{100 * x:+.2f}%"


def _fixed(x: float | None) -> str:
    return UNDETERMINED if x is None or not math.isfinite(x) else f"{x:.3f}"


def _p(x: float | None) -> str:
    return UNDETERMINED if x is None or not math.isfinite(x) else f"{x:.3g}"


def _mark(passed: bool | None) -> str:
    return UNDETERMINED if passed is None else (PASS if passed else FAIL)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "experiment"


# ---------------------------------------------------------------------------
# the document, as blocks rendered to Markdown and to HTML

Block = tuple  # ("h1"|"h2"|"p"|"ul"|"kv"|"table"|"img", ...)


def _md(blocks: list[Block]) -> str:
    def cell(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")
    out: list[str] = []
    for b in blocks:
        kind = b[0]
        if kind == "h1":
            out.append(f"# {b[1]}\n")
        elif kind == "h2":
            out.append(f"## {b[1]}\n")
        elif kind == "p":
            out.append(f"{b[1]}\n")
        elif kind in ("ul", "kv"):
            items = b[1] if kind == "ul" else [f"**{k}**: {v}" for k, v in b[1]]
            out.append("\n".join(f"- {x}" for x in items) + "\n")
        elif kind == "table":
            head, rows, right = b[1], b[2], b[3]
            out.append("| " + " | ".join(cell(h) for h in head) + " |")
            out.append("|" + "|".join("---:" if i in right else "---"
                                      for i in range(len(head))) + "|")
            out.extend("| " + " | ".join(cell(c) for c in r) + " |" for r in rows)
            out.append("")
        elif kind == "img":
            out.append(f"![{b[2]}]({b[1].name})\n")
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1300px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ccc}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ccc;padding:.25em .5em}th{background:#f2f2f2}
td.r{text-align:right;font-variant-numeric:tabular-nums}tr:nth-child(even) td{background:#fafafa}
img{max-width:100%;height:auto}
"""


def _html(title: str, blocks: list[Block]) -> str:
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        kind = b[0]
        if kind in ("h1", "h2", "p"):
            out.append(f"<{kind}>{e(b[1])}</{kind}>")
        elif kind == "ul":
            out.append("<ul>" + "".join(f"<li>{e(x)}</li>" for x in b[1]) + "</ul>")
        elif kind == "kv":
            out.append("<ul>" + "".join(f"<li><b>{e(k)}</b>: {e(v)}</li>"
                                        for k, v in b[1]) + "</ul>")
        elif kind == "table":
            head, rows, right = b[1], b[2], b[3]
            out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in head)
                       + "</tr></thead><tbody>")
            for r in rows:
                out.append("<tr>" + "".join(
                    f'<td class="r">{e(c)}</td>' if i in right else f"<td>{e(c)}</td>"
                    for i, c in enumerate(r)) + "</tr>")
            out.append("</tbody></table>")
        elif kind == "img":
            data = base64.b64encode(b[1].read_bytes()).decode("ascii")
            out.append(f'<p><img alt="{e(b[2])}" src="data:image/png;base64,{data}"></p>')
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------
# tables

def _param_key(params_order: Sequence[str] | None, seen: list[str | None]):
    order = {p: i for i, p in enumerate(params_order or ())}
    appear = {p: i for i, p in enumerate(seen)}
    return lambda p: (p is not None, order.get(p, len(order)), appear.get(p, 0))


def _sorted_comparisons(comps: list[Comparison], spec: ExperimentSpec) -> list[Comparison]:
    vps = list(dict.fromkeys(c.vp for c in comps))
    params = list(dict.fromkeys(c.param for c in comps))
    sources = list(dict.fromkeys(c.source for c in comps))
    pk = _param_key(spec.params_order, params)
    return sorted(comps, key=lambda c: (vps.index(c.vp), pk(c.param), sources.index(c.source)))


def _numeric_table(comps: list[Comparison], spec: ExperimentSpec, with_param: bool) -> Block:
    u = spec.unit
    has_truth = any(c.truth is not None for c in comps)
    head = ["VP"] + (["param"] if with_param else []) + [
        "source", "n (ref/src)", f"{spec.reference} mean ({u})", f"source mean ({u})",
        f"error abs ({u})", "error rel", "C1", "KS D", "p", "C2"]
    if has_truth:
        head += [f"truth ({u})", f"{spec.reference} − truth ({u})", f"source − truth ({u})",
                 "source − truth rel"]
    rows = []
    for c in comps:
        rs, ss = c.reference_stats, c.source_stats
        row = [c.vp] + ([c.param or ""] if with_param else []) + [
            c.source, f"{rs.n}/{ss.n}", _fmt(rs.mean), _fmt(ss.mean),
            _fmt(c.error_abs), _pct(c.error_rel), _mark(c.c1.passed),
            _fixed(c.c2.d), _p(c.c2.p), _mark(c.c2.passed)]
        if has_truth:
            row += [_fmt(c.truth), _fmt(c.reference_truth_error_abs),
                    _fmt(c.truth_error_abs), _pct(c.truth_error_rel)]
        rows.append(row)
    first_num = 3 if with_param else 2
    return ("table", head, rows, set(range(first_num, len(head))))


def _set_table(comps: list[Comparison], spec: ExperimentSpec, with_param: bool) -> Block:
    head = ["VP"] + (["param"] if with_param else []) + [
        "source", "runs (ref/src)", f"{spec.reference} items", "source items", "common",
        "Jaccard", "C3"]
    rows = []
    for c in comps:
        r = c.c3
        rows.append([c.vp] + ([c.param or ""] if with_param else []) + [
            c.source, f"{c.reference_runs}/{c.source_runs}", str(r.n_reference),
            str(r.n_other), str(r.n_common), _fixed(r.index), _mark(r.passed)])
    first_num = 3 if with_param else 2
    return ("table", head, rows, set(range(first_num, len(head))))


def _summary(comps: list[Comparison], spec: ExperimentSpec, with_param: bool) -> list[str]:
    unit = "VP × param rows" if with_param else "VPs"
    crits = ("c3",) if spec.kind == "set" else ("c1", "c2")
    lines = []
    for src in dict.fromkeys(c.source for c in comps):
        mine = [c for c in comps if c.source == src]
        parts = []
        for k in crits:
            res = [getattr(c, k).passed for c in mine]
            passed, judged = sum(1 for x in res if x), sum(1 for x in res if x is not None)
            part = f"{k.upper()} {passed}/{len(res)}"
            if judged < len(res):
                part += f" ({len(res) - judged} undetermined)"
            parts.append(part)
        lines.append(f"{src} vs {spec.reference}: " + ", ".join(parts) + f" {unit} pass")
    return lines


def _thresholds(spec: ExperimentSpec) -> str:
    if spec.kind == "set":
        t = 0.9 if spec.threshold is None else spec.threshold
        return f"C3: Jaccard index ≥ {t:g} (items pooled over all runs)."
    t = default_c1_threshold(spec.metric) if spec.threshold is None else spec.threshold
    return (f"C1: |1 − mean(source)/mean({spec.reference})| ≤ {100 * t:g}%; "
            f"C2: two-sided two-sample KS, p ≥ 0.05. "
            f"Errors are source − {spec.reference} (positive: the source measured more).")


# ---------------------------------------------------------------------------
# ECDF plots

def _panel_groups(rows: list[Sample], spec: ExperimentSpec):
    """[(title, truth, {source: [values]})] in grid order."""
    params_seen = list(dict.fromkeys(s.param for s in rows))
    mode = spec.panels or ("vp-param" if any(p is not None for p in params_seen) else "vp")
    pk = _param_key(spec.params_order, params_seen)
    vps = list(dict.fromkeys(s.vp for s in rows))
    if mode == "vp":
        keys = [(vp,) for vp in vps]
        key_of = lambda s: (s.vp,)  # noqa: E731
    elif mode == "param":
        keys = [(p,) for p in sorted(params_seen, key=pk)]
        key_of = lambda s: (s.param,)  # noqa: E731
    else:
        pairs = dict.fromkeys((s.vp, s.param) for s in rows)
        keys = sorted(pairs, key=lambda k: (vps.index(k[0]), pk(k[1])))
        key_of = lambda s: (s.vp, s.param)  # noqa: E731
    data: dict[tuple, dict[str, list[float]]] = {k: {} for k in keys}
    for s in rows:
        if s.value is not None and math.isfinite(s.value):
            data[key_of(s)].setdefault(s.source, []).append(float(s.value))
    out = []
    for k in keys:
        if mode == "vp":
            title, truth = k[0], _truth_for(spec.truth, k[0], None)
        elif mode == "param":
            title = str(k[0])
            ts = {_truth_for(spec.truth, vp, k[0]) for vp in vps}
            truth = ts.pop() if len(ts) == 1 else None
        else:
            title = k[0] if k[1] is None else f"{k[0]} · {k[1]}"
            truth = _truth_for(spec.truth, k[0], k[1])
        out.append((title, truth, data[k]))
    return out


def _plot_ecdf(path: Path, rows: list[Sample], spec: ExperimentSpec,
               sources: list[str]) -> list[str]:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    panels = _panel_groups(rows, spec)
    n = len(panels)
    cols = min(PANEL_COLUMNS, n)
    nrows = math.ceil(n / cols)
    w, h = PANEL_PX
    fig_w, fig_h = cols * w / _DPI, nrows * h / _DPI
    fig = Figure(figsize=(fig_w, fig_h), dpi=_DPI)
    FigureCanvasAgg(fig)
    # fixed margins (inches) instead of a layout engine: constrained layout
    # costs more than the drawing, and the image size must tell the grid
    top, left, right, bottom, head = 0.3, 0.6, 0.15, 0.5, 0.3
    cell_w, cell_h = fig_w / cols, (fig_h - top) / nrows
    colours = {src: f"C{i}" for i, src in enumerate(sources)}
    styles = {src: ("-" if i == 0 else ("--", "-.", ":")[(i - 1) % 3])
              for i, src in enumerate(sources)}
    for i in range(n):
        r, c = divmod(i, cols)
        x0 = (c * cell_w + left) / fig_w
        y0 = (fig_h - top - (r + 1) * cell_h + bottom) / fig_h
        ax = fig.add_axes((x0, y0, (cell_w - left - right) / fig_w,
                           (cell_h - bottom - head) / fig_h))
        title, truth, by_source = panels[i]
        for src in sources:
            vals = by_source.get(src)
            if not vals:
                continue
            x = np.sort(np.asarray(vals))
            y = np.arange(1, x.size + 1) / x.size
            ax.step(np.concatenate([[x[0]], x]), np.concatenate([[0.0], y]), where="post",
                    color=colours[src], linestyle=styles[src], linewidth=1.4,
                    label=f"{src} (n={x.size})")
        if truth is not None:
            ax.axvline(truth, color="black", linestyle=(0, (4, 2)), linewidth=1, label="truth")
        if not by_source:
            ax.text(0.5, 0.5, "no samples", ha="center", va="center", transform=ax.transAxes)
        # few ticks, y labels on the first column only: text is most of the cost
        ax.set_title(title, fontsize=10)
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_locator(MaxNLocator(5))
        ax.set_yticks((0, 0.25, 0.5, 0.75, 1), labels=None if c == 0 else ())
        ax.set_xlabel(spec.xlabel or f"{spec.title} ({spec.unit})", fontsize=9)
        if c == 0:
            ax.set_ylabel("ECDF", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(spec.title, fontsize=11, y=1 - 0.05 / fig_h, va="top")
    fig.savefig(path, format="png")
    return [p[0] for p in panels]


# ---------------------------------------------------------------------------
# Parquet

def write_samples_parquet(path: str | os.PathLike, samples: Iterable[Sample]) -> Path:
    """The samples, one row each, with exactly the Sample columns, typed."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    samples = list(samples)
    schema = pa.schema([
        pa.field("experiment", pa.string(), nullable=False),
        pa.field("vp", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("run", pa.int64(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("item", pa.string()),
        pa.field("param", pa.string()),
        pa.field("time_ns", pa.int64(), nullable=False),
    ])
    assert tuple(schema.names) == COLUMNS, "Sample columns changed: update the schema"
    arrays = []
    for f in schema:
        col = [getattr(s, f.name) for s in samples]
        if not f.nullable and any(v is None for v in col):
            raise ValueError(f"sample column {f.name!r} has missing values")
        try:
            arrays.append(pa.array(col, type=f.type))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, OverflowError) as e:
            raise ValueError(f"sample column {f.name!r} cannot be stored as {f.type}: {e}") from None
    path = Path(path)
    pq.write_table(pa.Table.from_arrays(arrays, schema=schema), path)
    return path


def read_samples_parquet(path: str | os.PathLike) -> list[Sample]:
    """The samples of a ``samples.parquet`` back as ``Sample`` rows (to re-run
    the criteria, or to merge studies)."""
    import pyarrow.parquet as pq

    table = pq.read_table(Path(path))
    if tuple(table.column_names) != COLUMNS:
        raise ValueError(f"{path}: columns {table.column_names} are not a sample table's {list(COLUMNS)}")
    return [Sample(**row) for row in table.to_pylist()]


# ---------------------------------------------------------------------------

def _machine() -> str:
    return f"{platform.node()} ({platform.platform()}, {os.cpu_count()} CPUs, Python {platform.python_version()})"


def _runs_text(rows: list[Sample]) -> str:
    per: dict[tuple[str, str], set[int]] = {}
    for s in rows:
        per.setdefault((s.vp, s.source), set()).add(s.run)
    counts = sorted(len(v) for v in per.values())
    span = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]}–{counts[-1]}"
    return f"Runs per VP and source: {span}"


def write_report(out_dir: str | os.PathLike, samples: Iterable[Sample], *, title: str,
                 experiments: Sequence[ExperimentSpec],
                 meta: Mapping[str, Any] | None = None) -> ReportFiles:
    """Write the report, plots, Parquet and JSON for ``experiments`` into ``out_dir``."""
    samples = list(samples)
    for s in samples:
        if not isinstance(s, Sample):
            raise ValueError(f"write_report wants Sample rows, not {type(s).__name__}")
    names = [x.name for x in experiments]
    if len(set(names)) != len(names):
        raise ValueError(f"experiment names repeat: {names}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    meta = dict(meta or {})
    now = str(meta.pop("date", None) or datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"))
    meta.setdefault("machine", _machine())
    blocks: list[Block] = [("h1", title),
                           ("kv", [("date", now)] + [(str(k), str(v)) for k, v in meta.items()]),
                           ("p", f"{len(samples)} samples; criteria of PAM'25 “Marionette "
                                 "Measurement”: ● passed, ○ failed, – undetermined.")]
    by_exp: dict[tuple[str, str], list[Sample]] = {}
    for s in samples:
        by_exp.setdefault((s.experiment, s.metric), []).append(s)
    shown = {(x.name, x.metric) for x in experiments}
    left = [f"{e} / {m} ({len(v)} samples)" for (e, m), v in by_exp.items() if (e, m) not in shown]
    if left:
        blocks.append(("p", "Samples not in this report (kept in samples.parquet): "
                            + "; ".join(left) + "."))

    all_comps: list[Comparison] = []
    plots: dict[str, Path] = {}
    panels: dict[str, list[str]] = {}
    for spec in experiments:
        blocks.append(("h2", f"{spec.title} ({spec.name})"))
        rows = by_exp.get((spec.name, spec.metric), [])
        if not rows:
            blocks.append(("p", f"No samples for {spec.name} / {spec.metric}."))
            continue
        comps = compare(rows, spec.name, spec.reference, threshold=spec.threshold,
                        truth=spec.truth, kind=spec.kind)
        comps = _sorted_comparisons(comps, spec)
        all_comps.extend(comps)
        with_param = any(c.param is not None for c in comps)
        sources = [spec.reference] + [x for x in dict.fromkeys(s.source for s in rows)
                                      if x != spec.reference]
        blocks.append(("p", f"Reference: {spec.reference}. {_thresholds(spec)} "
                            f"{_runs_text(rows)}."))
        table = (_set_table if spec.kind == "set" else _numeric_table)(comps, spec, with_param)
        blocks.append(table)
        blocks.append(("ul", _summary(comps, spec, with_param)))
        reasons = [f"{c.vp}{' · ' + c.param if c.param else ''} · {c.source}: {'; '.join(c.reasons)}"
                   for c in comps if c.reasons]
        if reasons:
            blocks.append(("p", "Notes:"))
            blocks.append(("ul", reasons))
        if spec.kind == "numeric":
            png = out / f"ecdf-{_slug(spec.name)}.png"
            panels[spec.name] = _plot_ecdf(png, rows, spec, sources)
            plots[spec.name] = png
            blocks.append(("img", png, f"ECDF of {spec.title}"))

    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(_md(blocks), encoding="utf-8")
    html_path.write_text(_html(title, blocks), encoding="utf-8")
    parquet = write_samples_parquet(out / "samples.parquet", samples)
    comp_path = out / "comparisons.json"
    comp_path.write_text(json.dumps({
        "title": title, "generated": now, "meta": _json_ready(meta),
        "experiments": [x.to_dict() for x in experiments],
        "comparisons": [c.to_dict() for c in all_comps],
    }, indent=1, ensure_ascii=False, allow_nan=False, default=str) + "\n", encoding="utf-8")
    return ReportFiles(out, md_path, html_path, parquet, comp_path, plots, panels)
