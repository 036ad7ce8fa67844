"""write_report on a synthetic study: tables and marks, ECDF panels, Parquet and JSON."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from marionet.evaluate.report import PANEL_PX, ExperimentSpec, write_report
from marionet.evaluate.samples import COLUMNS, Sample

pytest.importorskip("scipy")
pytest.importorskip("matplotlib")
pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

VPS = {"vp-a": 10.0, "vp-b": 20.0, "vp-c": 40.0}
RUNS = 20


def study() -> list[Sample]:
    """3 VPs × 3 sources × 20 runs: an RTT per hop (params) and a path (set).

    native equals the reference everywhere; remote is 20 % slow on vp-c
    (C1 and C2 fail there), lost one run on vp-a, and saw a second address
    at hop 3 on vp-b (Jaccard 3/4).
    """
    out = []
    for i, (vp, base) in enumerate(VPS.items()):
        for run in range(RUNS):
            for hop in ("2", "1"):                          # appear out of order
                v = base * int(hop) + 0.05 * run
                out.append(Sample("trace-rtt", vp, "traceroute", run, "rtt_ms", v, param=hop,
                                  time_ns=run * 1000))
                out.append(Sample("trace-rtt", vp, "native", run, "rtt_ms", v, param=hop))
                remote = v * 1.2 if vp == "vp-c" else v + 0.01
                if vp == "vp-a" and hop == "1" and run == 7:
                    remote = None
                out.append(Sample("trace-rtt", vp, "remote", run, "rtt_ms", remote, param=hop))
            for src in ("traceroute", "native", "remote"):
                for hop in (1, 2, 3):
                    addr = f"10.{i}.{hop}.1"
                    if src == "remote" and vp == "vp-b" and hop == 3 and run % 2:
                        addr = f"10.{i}.{hop}.2"
                    out.append(Sample("trace-path", vp, src, run, "path", item=f"{hop}|{addr}"))
    out.append(Sample("extra", "vp-a", "native", 0, "gap_us", 5.0))
    return out


TRUTH = {(vp, hop): base * int(hop) for vp, base in VPS.items() for hop in ("1", "2")}


def specs(panels=None) -> list[ExperimentSpec]:
    return [
        ExperimentSpec("trace-rtt", "Traceroute hop RTT", "rtt_ms", "traceroute",
                       truth=TRUTH, params_order=["1", "2"], panels=panels),
        ExperimentSpec("trace-path", "Traceroute path", "path", "traceroute", kind="set"),
    ]


class _Tables(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tables, self._cell = [], None

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append(self._cell)
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data


def md_tables(text: str) -> list[list[list[str]]]:
    tables, cur = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if cur is None:
                cur = []
                tables.append(cur)
            cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
            if not all(re.fullmatch(r"-+:?", c) for c in line.strip("|").split("|")):
                cur.append(cells)
        else:
            cur = None
    return tables


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    samples = study()
    files = write_report(out / "study", samples, title="Synthetic congruence study",
                         experiments=specs(), meta={"lab": "paper", "runs per VP": RUNS})
    return files, samples


def test_files_written(report):
    files, _ = report
    for p in (files.markdown, files.html, files.parquet, files.comparisons):
        assert p.is_file() and p.stat().st_size > 0 and p.parent == files.out_dir
    assert set(files.plots) == {"trace-rtt"}                    # set experiments have no ECDF


def test_numeric_table_rows_and_marks(report):
    files, _ = report
    md = files.markdown.read_text()
    rtt, path = md_tables(md)
    head, rows = rtt[0], rtt[1:]
    assert head[:5] == ["VP", "param", "source", "n (ref/src)", "traceroute mean (ms)"]
    assert {"C1", "KS D", "p", "C2", "truth (ms)", "source − truth (ms)"} <= set(head)
    col = {h: i for i, h in enumerate(head)}
    assert [(r[0], r[1], r[2]) for r in rows] == [
        (vp, hop, src) for vp in VPS for hop in ("1", "2") for src in ("native", "remote")]
    for r in rows:
        vp, hop, src = r[0], r[1], r[2]
        want = "○" if (vp == "vp-c" and src == "remote") else "●"
        assert (r[col["C1"]], r[col["C2"]]) == (want, want), r
        assert float(r[col["truth (ms)"]]) == TRUTH[vp, hop]
    by = {(r[0], r[1], r[2]): r for r in rows}
    assert by["vp-a", "1", "remote"][col["n (ref/src)"]] == "20/19"   # the lost run
    slow = by["vp-c", "2", "remote"]
    assert slow[col["error rel"]] == "+20.00%" and slow[col["KS D"]] == "1.000"
    same = by["vp-b", "1", "native"]
    assert same[col["error rel"]] == "+0.00%" and same[col["p"]] == "1"
    assert float(same[col["traceroute mean (ms)"]]) == pytest.approx(20.475)
    assert "- native vs traceroute: C1 6/6, C2 6/6 VP × param rows pass" in md
    assert "- remote vs traceroute: C1 4/6, C2 4/6 VP × param rows pass" in md


def test_set_table_rows_and_marks(report):
    files, _ = report
    md = files.markdown.read_text()
    path = md_tables(md)[1]
    head, rows = path[0], path[1:]
    assert head == ["VP", "source", "runs (ref/src)", "traceroute items", "source items",
                    "common", "Jaccard", "C3"]
    assert [(r[0], r[1]) for r in rows] == [(vp, s) for vp in VPS for s in ("native", "remote")]
    by = {(r[0], r[1]): r for r in rows}
    assert by["vp-b", "remote"][3:] == ["3", "4", "3", "0.750", "○"]
    assert by["vp-a", "native"][2:] == ["20/20", "3", "3", "3", "1.000", "●"]
    assert sum(r[-1] == "●" for r in rows) == 5
    assert "- remote vs traceroute: C3 2/3 VPs pass" in md


def test_header_and_notes(report):
    files, _ = report
    md = files.markdown.read_text()
    assert md.startswith("# Synthetic congruence study\n")
    assert re.search(r"\*\*date\*\*: \d{4}-\d\d-\d\d \d\d:\d\d UTC", md)
    assert "**lab**: paper" in md and "**runs per VP**: 20" in md and "**machine**:" in md
    assert "extra / gap_us (1 samples)" in md                  # nothing dropped silently
    assert "Runs per VP and source: 20." in md


def test_html_has_the_same_tables_and_embeds_its_plots(report):
    files, _ = report
    text = files.html.read_text()
    parser = _Tables()
    parser.feed(text)
    assert parser.tables == md_tables(files.markdown.read_text())
    assert text.count('src="data:image/png;base64,') == 1
    assert "remote vs traceroute: C3 2/3 VPs pass" in text
    assert "<style>" in text and 'href="' not in text


@pytest.mark.parametrize("panels, titles", [
    (None, [f"{vp} · {hop}" for vp in VPS for hop in ("1", "2")]),
    ("vp", list(VPS)),
    ("param", ["1", "2"]),
])
def test_ecdf_panels(tmp_path, panels, titles):
    import matplotlib.image as mpimg
    files = write_report(tmp_path, study(), title="t", experiments=specs(panels))
    assert files.panels["trace-rtt"] == titles
    img = mpimg.imread(files.plots["trace-rtt"])
    cols = min(3, len(titles))
    rows = -(-len(titles) // cols)
    assert img.shape[0] > 0 and img.shape[1] > 0
    assert img.shape[:2] == (rows * PANEL_PX[1], cols * PANEL_PX[0])
    assert img[..., :3].std() > 0.05                                  # something is drawn
    assert files.plots["trace-rtt"].name in files.markdown.read_text()


def test_parquet_round_trip(report):
    files, samples = report
    table = pq.read_table(files.parquet)
    assert table.shape == (len(samples), len(COLUMNS))
    assert tuple(table.column_names) == COLUMNS
    types = {f.name: f.type for f in table.schema}
    assert types == {"experiment": pa.string(), "vp": pa.string(), "source": pa.string(),
                     "run": pa.int64(), "metric": pa.string(), "value": pa.float64(),
                     "item": pa.string(), "param": pa.string(), "time_ns": pa.int64()}
    assert [f.name for f in table.schema if f.nullable] == ["value", "item", "param"]
    assert [Sample(**r) for r in table.to_pylist()] == samples
    assert table.column("value").null_count == sum(s.value is None for s in samples)


def test_comparisons_json(report):
    files, _ = report
    def no_nan(x):
        raise AssertionError(f"{x} in JSON")
    data = json.loads(files.comparisons.read_text(), parse_constant=no_nan)
    comps = data["comparisons"]
    assert len(comps) == 3 * 2 * 2 + 3 * 2
    assert [e["name"] for e in data["experiments"]] == ["trace-rtt", "trace-path"]
    slow = next(c for c in comps if (c["vp"], c["param"], c["source"]) == ("vp-c", "1", "remote"))
    assert slow["c1"]["passed"] is False and slow["c1"]["rel"] == pytest.approx(0.2)
    assert slow["truth"] == 40.0 and slow["reference_stats"]["n"] == RUNS
    assert data["meta"]["runs per VP"] == RUNS


def test_degenerate_study_and_bad_specs(tmp_path):
    rows = [Sample("tp", "vp", "iperf3", r, "mbps", None) for r in range(3)]
    rows += [Sample("tp", "vp", "remote", 0, "mbps", 90.0)]
    files = write_report(tmp_path, rows, title="t", experiments=[
        ExperimentSpec("tp", "Throughput", "mbps", "iperf3", unit="Mbit/s"),
        ExperimentSpec("gone", "Nothing measured", "mbps", "iperf3")])
    md = files.markdown.read_text()
    assert "all 3 reference runs failed" in md and "No samples for gone / mbps." in md
    assert "C1 0/1 (1 undetermined)" in md
    assert files.panels["tp"] == ["vp"]
    with pytest.raises(ValueError, match="kind"):
        ExperimentSpec("x", "x", "m", "ref", kind="table")
    with pytest.raises(ValueError, match="panels"):
        ExperimentSpec("x", "x", "m", "ref", panels="grid")
    with pytest.raises(ValueError, match="repeat"):
        write_report(tmp_path, rows, title="t", experiments=[
            ExperimentSpec("tp", "a", "mbps", "iperf3"), ExperimentSpec("tp", "b", "mbps", "iperf3")])
    with pytest.raises(ValueError, match="Sample rows"):
        write_report(tmp_path, [{"vp": "x"}], title="t", experiments=[])
