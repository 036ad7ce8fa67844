"""``marionet evaluate lab``: a short study on a small lab writes the whole report.

Two VPs with different delays and rates reach one server host running the
throughput server, iperf3 and nginx (a stable and a per-request page).
Every experiment runs twice per VP and source through the real CLI; the
report must hold a table row per VP and compared source, one ECDF panel
per VP (per VP and spacing for the send gap), and the Parquet file every
sample with the right columns and types — and the lab's congruent sources
must agree where agreement does not depend on timing: identical paths and
web bodies (Jaccard 1), throughput within 15% of the native client on
these short transfers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.root, pytest.mark.slow]

SPEC = """
[lab]
name = "evst"
controller = "auto"

[[vp]]
name = "vp-a"

[[vp]]
name = "vp-b"

[[router]]
name = "r-a"

[[router]]
name = "core"

[[host]]
name = "srv"

[[link]]
a = "vp-a"
b = "r-a"
delay = "4ms"
rate = "50mbit"

[[link]]
a = "vp-b"
b = "core"
delay = "9ms"
rate = "20mbit"

[[link]]
a = "r-a"
b = "core"

[[link]]
a = "core"
b = "srv"

[[service]]
host = "srv"
kind = "throughput"

[[service]]
host = "srv"
kind = "bulk"
options = { impl = "iperf3" }

[[service]]
host = "srv"
kind = "https"
options = { hostnames = ["www.evst.example"], dynamic = ["live.html"], files = { "index.html" = "<p>stable</p>\\n", "live.html" = "<p><!--# echo var=\\"request_id\\" --> <!--# echo var=\\"msec\\" --></p>\\n" } }
"""

VPS = ("vp-a", "vp-b")
RUNS = 2


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("evaluate")
    spec = d / "lab.toml"
    spec.write_text(SPEC)
    out = d / "report"
    cp = subprocess.run([sys.executable, "-m", "marionet", "evaluate", "lab", str(spec), "--server", "srv",
                         "--runs", str(RUNS), "--iperf3", "--size", str(2 << 20), "--skip", str(256 << 10), "--out", str(out)],
                        capture_output=True, text=True, timeout=420)
    assert cp.returncode == 0, cp.stderr[-3000:]
    assert "report:" in cp.stderr
    return out


def test_report_tables_have_a_row_per_vp_and_source(study: Path) -> None:
    md = (study / "report.md").read_text()
    html = (study / "report.html").read_text()
    sections = {"trace-rtt": ("scamper", "native", "endpoint", "remote"),
                "trace-path": ("scamper", "native", "endpoint", "remote"),
                "throughput-down": ("native", "endpoint", "remote", "iperf3"),
                "throughput-up": ("native", "endpoint", "remote", "iperf3"),
                "web": ("native", "endpoint", "remote"),
                "send-gap": ("native", "remote"), "send-gap-rx": ("native", "remote")}
    for name, sources in sections.items():
        assert f"({name})" in md, name
        part = md.split(f"({name})", 1)[1].split("\n## ", 1)[0]
        for vp in VPS:
            for src in sources:
                assert any(line.startswith(f"| {vp} |") and f"| {src} |" in line for line in part.splitlines()), \
                    (name, vp, src)
        assert name in html
    assert "●" in md


def test_plots_have_one_panel_per_vp(study: Path) -> None:
    import matplotlib.image as mpimg

    comps = json.loads((study / "comparisons.json").read_text())
    assert comps["comparisons"]
    for name, panels in (("trace-rtt", 2), ("throughput-down", 2), ("throughput-up", 2), ("send-gap", 10)):
        png = study / f"ecdf-{name}.png"
        img = mpimg.imread(png)
        assert img.shape[0] > 100 and img.shape[1] > 100, name
        cols = min(3, panels)
        rows = -(-panels // cols)
        assert img.shape[1] / img.shape[0] == pytest.approx(cols * 400 / (rows * 300), rel=0.05), name


def test_parquet_holds_every_sample_with_typed_columns(study: Path) -> None:
    import pyarrow.parquet as pq

    from marionet.evaluate.samples import COLUMNS

    t = pq.read_table(study / "samples.parquet")
    assert tuple(t.column_names) == COLUMNS
    assert str(t.schema.field("value").type) == "double" and str(t.schema.field("run").type) == "int64"
    rows = t.to_pylist()
    runs = {(r["experiment"], r["vp"], r["source"]) for r in rows}
    for vp in VPS:
        for src in ("traceroute", "scamper", "native", "endpoint", "remote"):
            assert ("trace-rtt", vp, src) in runs
        for src in ("native-client", "native", "endpoint", "remote", "iperf3"):
            assert ("throughput-down", vp, src) in runs and ("throughput-up", vp, src) in runs
    assert {r["run"] for r in rows} == set(range(RUNS))


def test_congruent_where_timing_does_not_matter(study: Path) -> None:
    comps = json.loads((study / "comparisons.json").read_text())["comparisons"]
    by = {(c["experiment"], c["vp"], c["source"]): c for c in comps}
    for vp in VPS:
        for src in ("scamper", "native", "endpoint", "remote"):
            assert by[("trace-path", vp, src)]["c3"]["index"] == 1.0
        for src in ("native", "endpoint", "remote"):
            assert by[("web", vp, src)]["c3"]["index"] == 1.0
            for exp in ("throughput-down", "throughput-up"):
                # 2 MiB transfers run twice: a congruence check, not the 6% acceptance figure (that one is
                # test_throughput_lab's, on 12 MiB transfers); CI measured 7.6% here once on a loaded machine.
                assert by[(exp, vp, src)]["c1"]["rel"] <= 0.15, (exp, vp, src)
