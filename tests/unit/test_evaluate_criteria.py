"""Congruence criteria C1/C2/C3: hand-computed values, scipy itself, boundaries, degenerate inputs."""

from __future__ import annotations

import json
import math
import random
import warnings

import pytest

from marionet.evaluate.criteria import (C1_LATENCY, C1_THROUGHPUT, c1, c2, c3, compare,
                                        default_c1_threshold, describe, jaccard)
from marionet.evaluate.samples import Sample

scipy_stats = pytest.importorskip("scipy.stats")


@pytest.fixture(autouse=True)
def no_warnings():
    """Nothing from numpy/scipy may leak out of the criteria."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# --------------------------------------------------------------------------- describe

def test_describe_hand_computed():
    s = describe([4.0, 1.0, None, 3.0, float("nan"), 2.0])
    assert (s.n, s.failed) == (4, 2)
    assert s.mean == 2.5
    assert s.sd == pytest.approx(math.sqrt(5 / 3))          # ddof=1
    assert s.median == 2.5
    assert s.p99 == pytest.approx(3.97)                      # 3 + 0.97 × (4 − 3)
    assert (s.min, s.max) == (1.0, 4.0)


def test_describe_degenerate():
    empty = describe([])
    assert empty.n == 0 and math.isnan(empty.mean) and math.isnan(empty.p99)
    failed = describe([None, None])
    assert (failed.n, failed.failed) == (0, 2)
    one = describe([7.0])
    assert one.mean == one.median == one.p99 == 7.0 and math.isnan(one.sd)
    assert describe([]).to_dict()["mean"] is None


def test_describe_rejects_text():
    with pytest.raises(ValueError, match="not a number"):
        describe([1.0, "fast"])


# --------------------------------------------------------------------------- C1

def test_c1_hand_computed():
    r = c1([10.0, 20.0], [16.5, 16.5], C1_LATENCY)          # means 15 and 16.5: 10 %
    assert (r.reference_mean, r.other_mean) == (15.0, 16.5)
    assert r.rel == pytest.approx(0.1)
    r = c1([100.0], [103.0], C1_LATENCY)
    assert r.rel == pytest.approx(0.03) and r.passed is True
    r = c1([100.0], [80.0], C1_LATENCY)
    assert r.rel == pytest.approx(0.2) and r.passed is False
    assert c1([100.0, None], [None, 100.0], 0.0).passed is True  # failures left out


@pytest.mark.parametrize("ref, other, threshold, passed", [
    ([1.0], [1.1], C1_LATENCY, True),          # 1 − 1.1 = −0.10000000000000009 in floats
    ([100.0], [110.0], C1_LATENCY, True),
    ([100.0], [90.0], C1_LATENCY, True),
    ([100.0], [110.001], C1_LATENCY, False),
    ([100.0], [89.999], C1_LATENCY, False),
    ([50.0], [53.0], C1_THROUGHPUT, True),
    ([50.0], [47.0], C1_THROUGHPUT, True),
    ([50.0], [53.001], C1_THROUGHPUT, False),
])
def test_c1_threshold_boundary(ref, other, threshold, passed):
    assert c1(ref, other, threshold).passed is passed


def test_c1_default_thresholds():
    assert (C1_LATENCY, C1_THROUGHPUT) == (0.10, 0.06)
    assert default_c1_threshold("mbps") == C1_THROUGHPUT
    assert default_c1_threshold("rtt_ms") == C1_LATENCY
    assert default_c1_threshold("gap_us") == C1_LATENCY


@pytest.mark.parametrize("ref, other, reason", [
    ([], [1.0], "no reference samples"),
    ([1.0], [], "no compared samples"),
    ([None, None], [1.0], "all 2 reference runs failed"),
    ([1.0], [float("nan")], "all 1 compared runs failed"),
    ([0.0, 0.0], [1.0], "reference mean is zero"),
    ([-1.0, 1.0], [0.0], "reference mean is zero"),
])
def test_c1_degenerate(ref, other, reason):
    r = c1(ref, other, C1_LATENCY)
    assert r.passed is None and math.isnan(r.rel) and reason in r.reason


def test_c1_bad_threshold():
    with pytest.raises(ValueError, match="threshold"):
        c1([1.0], [1.0], -0.1)
    with pytest.raises(ValueError, match="threshold"):
        c1([1.0], [1.0], float("nan"))


# --------------------------------------------------------------------------- C2

def test_c2_hand_computed():
    # disjoint samples of 3: D = 1, exact two-sided p = 2 / C(6,3) = 0.1 — the smallest p 3 vs 3
    # can give, so at α = 0.05 the test cannot reject anything: undetermined, not "passed"
    r = c2([1, 2, 3], [4, 5, 6])
    assert r.d == 1.0 and r.p == pytest.approx(0.1) and r.passed is None
    assert "too few samples for KS to reject" in r.reason
    # disjoint samples of 4: p = 2 / C(8,4) = 2/70 < 0.05
    r = c2([1, 2, 3, 4], [5, 6, 7, 8])
    assert r.p == pytest.approx(2 / 70) and r.passed is False
    # disjoint samples of 5: p = 2 / C(10,5) = 2/252 < 0.05
    r = c2([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert r.d == 1.0 and r.p == pytest.approx(2 / 252) and r.passed is False
    # ties: ECDFs at 1, 2, 3, 4 are (.25, 0), (.75, .5), (1, .75), (1, 1) → D = 0.25
    r = c2([1, 2, 2, 3], [2, 2, 3, 4])
    assert r.d == pytest.approx(0.25) and (r.n_reference, r.n_other) == (4, 4)


def test_c2_alpha_boundary():
    assert c2([1, 2, 3], [4, 5, 6], alpha=0.1).passed is True        # p = α exactly
    assert c2([1, 2, 3], [4, 5, 6], alpha=0.1000001).passed is False


@pytest.mark.parametrize("seed, n, m, ties, shift", [
    (1, 100, 100, False, 0.2), (2, 100, 80, True, 0.2), (3, 3000, 2000, False, 0.2),
    (4, 500, 500, True, 0.2), (5, 200, 150, True, 0.0), (6, 3000, 2500, False, 0.0)])
def test_c2_equals_scipy(seed, n, m, ties, shift):
    rng = random.Random(seed)
    a = [rng.gauss(10, 1) for _ in range(n)]
    b = [rng.gauss(10 + shift, 1 + shift / 2) for _ in range(m)]
    if ties:                                      # a coarse clock: many equal values
        a, b = [round(x, 1) for x in a], [round(x, 1) for x in b]
    want = scipy_stats.ks_2samp(a, b, alternative="two-sided")
    got = c2(a, b)
    assert got.d == pytest.approx(want.statistic, abs=1e-15)
    assert got.p == pytest.approx(want.pvalue, rel=1e-12)
    assert got.passed is bool(want.pvalue >= 0.05)


def test_c2_failures_left_out_as_scipy_would_never_see_them():
    a, b = [1.0, 2.0, None, 3.0, 4.0], [2.5, float("nan"), 3.5, 4.5]
    want = scipy_stats.ks_2samp([1.0, 2.0, 3.0, 4.0], [2.5, 3.5, 4.5])
    got = c2(a, b)
    assert (got.d, got.p) == (pytest.approx(want.statistic), pytest.approx(want.pvalue))


def test_c2_degenerate():
    same = c2([5.0] * 20, [5.0] * 20)                      # identical constant samples
    assert (same.d, same.p, same.passed) == (0.0, 1.0, True)
    apart = c2([5.0] * 20, [6.0] * 20)                     # different constants
    assert apart.d == 1.0 and apart.passed is False
    one = c2([1.0], [2.0])
    assert one.passed is None and "too few samples" in one.reason
    empty = c2([], [1.0, 2.0])
    assert empty.passed is None and math.isnan(empty.d) and math.isnan(empty.p)
    failed = c2([1.0, 2.0], [None] * 3)
    assert failed.passed is None and failed.reason == "all 3 compared runs failed"
    with pytest.raises(ValueError, match="alpha"):
        c2([1.0], [1.0], alpha=0)


# --------------------------------------------------------------------------- C3

def test_jaccard_hand_computed():
    assert jaccard(["a", "b", "c"], ["b", "c", "d"]) == 0.5
    assert jaccard({"a"}, {"a"}) == 1.0
    assert jaccard(["a"], ["b"]) == 0.0
    assert math.isnan(jaccard([], []))


def test_c3_pools_runs_and_counts():
    ref_runs = [{"1|10.0.0.1", "2|10.0.1.1"}, {"1|10.0.0.1", "2|10.0.1.2"}]  # a load balancer
    other = ["1|10.0.0.1", "2|10.0.1.1", "2|10.0.1.1"]
    r = c3(ref_runs, other)
    assert (r.n_reference, r.n_other, r.n_common) == (3, 2, 2)
    assert r.index == pytest.approx(2 / 3) and r.passed is False


def test_c3_threshold_boundary():
    common = [f"{i}|x" for i in range(9)]
    assert c3(common + ["9|a"], common).index == 0.9          # 9 / 10
    assert c3(common + ["9|a"], common).passed is True
    eight = common[:8]
    assert c3(eight + ["8|a"], eight).passed is False         # 8 / 9


def test_c3_web_failure_matches_only_the_same_failure():
    ref = ["site-a|ERROR:timeout", "site-b|abc"]
    assert c3(ref, ["site-a|ERROR:timeout", "site-b|abc"]).index == 1.0
    assert c3(ref, ["site-a|ERROR:refused", "site-b|abc"]).index == pytest.approx(1 / 3)
    assert c3(ref, ["site-a|abc", "site-b|abc"]).index == pytest.approx(1 / 3)


def test_c3_degenerate():
    none = c3([], [])
    assert none.passed is None and math.isnan(none.index) and none.reason
    assert c3([], ["a"]).passed is None
    assert c3(["a"], [None]).reason == "no compared items"
    with pytest.raises(ValueError, match="strings"):
        c3([1, 2], ["a"])
    with pytest.raises(ValueError, match="not one string"):
        c3("abc", ["a"])
    with pytest.raises(ValueError, match="threshold"):
        c3(["a"], ["a"], threshold=1.5)


# --------------------------------------------------------------------------- compare

def _rtt_samples():
    """Two VPs, two hops, a reference and two sources; remote is 20 % slow on vp-b."""
    out = []
    for vp, base in (("vp-a", 10.0), ("vp-b", 40.0)):
        for hop in ("1", "2"):
            for run in range(10):
                v = base * int(hop) + 0.1 * run
                out.append(Sample("trace-rtt", vp, "traceroute", run, "rtt_ms", v, param=hop))
                out.append(Sample("trace-rtt", vp, "native", run, "rtt_ms", v, param=hop))
                slow = 1.2 if vp == "vp-b" else 1.0
                out.append(Sample("trace-rtt", vp, "remote", run, "rtt_ms", v * slow, param=hop))
    return out


def test_compare_numeric():
    comps = compare(_rtt_samples(), "trace-rtt", "traceroute",
                    truth={("vp-a", "1"): 10.0, "vp-b": 80.0})
    assert [(c.vp, c.param, c.source) for c in comps] == [
        (vp, hop, src) for vp in ("vp-a", "vp-b") for hop in ("1", "2")
        for src in ("native", "remote")]
    by = {(c.vp, c.param, c.source): c for c in comps}
    same = by["vp-a", "1", "native"]
    assert same.kind == "numeric" and same.reference_stats.n == same.source_stats.n == 10
    assert same.reference_stats.mean == pytest.approx(10.45)
    assert same.error_abs == 0 and same.c1.passed and same.c2.d == 0 and same.c2.passed
    assert same.truth == 10.0 and same.truth_error_abs == pytest.approx(0.45)
    assert same.truth_error_rel == pytest.approx(0.045)
    slow = by["vp-b", "2", "remote"]
    assert slow.error_abs == pytest.approx(0.2 * 80.45)
    assert slow.error_rel == pytest.approx(0.2)
    assert slow.c1.passed is False and slow.c2.passed is False and slow.c2.d == 1.0
    assert slow.truth == 80.0                                     # vp → value fallback
    assert slow.reference_truth_error_abs == pytest.approx(0.45)
    assert by["vp-a", "2", "remote"].truth is None                # no truth for it
    assert math.isnan(by["vp-a", "2", "remote"].truth_error_abs)
    text = json.dumps([c.to_dict() for c in comps], allow_nan=False)
    assert '"truth_error_abs": null' in text


def test_compare_threshold_override_and_missing_source():
    rows = [Sample("tp", "vp", "iperf3", r, "mbps", 100.0 + r) for r in range(5)]
    rows += [Sample("tp", "vp", "remote", r, "mbps", 105.0 + r) for r in range(5)]
    rows += [Sample("tp", "vp2", "iperf3", r, "mbps", 50.0) for r in range(5)]
    comps = compare(rows, "tp", "iperf3")
    assert comps[0].c1.threshold == C1_THROUGHPUT and comps[0].c1.passed is True
    assert compare(rows, "tp", "iperf3", threshold=0.01)[0].c1.passed is False
    missing = comps[1]
    assert (missing.vp, missing.source, missing.source_runs) == ("vp2", "remote", 0)
    assert missing.c1.passed is None and "no compared samples" in missing.reasons


def test_compare_degenerate_groups():
    rows = [Sample("g", "zero", "ref", r, "gap_us", 0.0) for r in range(4)]
    rows += [Sample("g", "zero", "src", r, "gap_us", 0.0) for r in range(4)]
    rows += [Sample("g", "dead", "ref", r, "gap_us", None) for r in range(3)]
    rows += [Sample("g", "dead", "src", r, "gap_us", 1.0) for r in range(3)]
    rows += [Sample("g", "one", "ref", 0, "gap_us", 1.0), Sample("g", "one", "src", 0, "gap_us", 1.0)]
    by = {c.vp: c for c in compare(rows, "g", "ref")}
    assert by["zero"].c1.passed is None and math.isnan(by["zero"].error_rel)
    assert by["zero"].c2.passed is True                          # identical constants
    assert by["dead"].reference_stats.failed == 3
    assert by["dead"].c1.passed is None and by["dead"].c2.passed is None
    assert "all 3 reference runs failed" in by["dead"].reasons
    assert by["one"].c1.passed is True and by["one"].c2.passed is None
    json.dumps([c.to_dict() for c in by.values()], allow_nan=False)


def test_compare_set():
    rows = []
    for run in range(4):
        for hop in range(1, 4):
            rows.append(Sample("path", "vp", "scamper", run, "path", item=f"{hop}|10.0.{hop}.1"))
            addr = "10.9.9.9" if (hop == 3 and run == 0) else f"10.0.{hop}.1"
            rows.append(Sample("path", "vp", "remote", run, "path", item=f"{hop}|{addr}"))
    rows.append(Sample("path", "vp", "native", 0, "path"))     # a run that failed outright
    comps = compare(rows, "path", "scamper")
    remote = next(c for c in comps if c.source == "remote")
    assert remote.kind == "set" and remote.c3.index == 0.75 and remote.c3.passed is False
    assert remote.reference_stats is None and remote.c1 is None
    native = next(c for c in comps if c.source == "native")
    assert native.c3.passed is None and native.source_runs == 1


def test_compare_bad_input():
    rows = _rtt_samples()
    with pytest.raises(ValueError, match="no samples for experiment"):
        compare(rows, "nothing", "traceroute")
    with pytest.raises(ValueError, match="reference source 'scamper'"):
        compare(rows, "trace-rtt", "scamper")
    with pytest.raises(ValueError, match="set comparison"):
        compare(rows, "trace-rtt", "traceroute", kind="set")
    with pytest.raises(ValueError, match="kind"):
        compare(rows, "trace-rtt", "traceroute", kind="bar")
    mixed = rows + [Sample("trace-rtt", "vp-a", "native", 99, "rtt_ms", item="1|x")]
    with pytest.raises(ValueError, match="numeric comparison"):
        compare(mixed, "trace-rtt", "traceroute", kind="numeric")
    with pytest.raises(ValueError, match="truth must be a mapping"):
        compare(rows, "trace-rtt", "traceroute", truth=10.0)


def test_import_is_light():
    import subprocess
    import sys
    code = ("import sys, marionet.evaluate, marionet.evaluate.criteria, marionet.evaluate.report;"
            "print([m for m in ('numpy', 'scipy', 'matplotlib', 'pyarrow', 'pandas') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
