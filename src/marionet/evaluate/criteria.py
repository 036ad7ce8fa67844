"""Congruence criteria (PAM'25 "Marionette Measurement", §5): C1, C2, C3.

Why these three: a measurement whose logic runs off the VP is *congruent*
with one run natively when their means agree (C1: ``|1 − x̄_other /
x̄_ref| ≤ c``, c = 10 % for latency, 6 % for throughput), their
distributions cannot be told apart (C2: two-sample Kolmogorov–Smirnov,
two-sided, not significant at α = 0.05) and, for set-valued results, they
saw the same things (C3: Jaccard index ≥ 0.9).

Set results are compared as sets of strings pooled over all runs: a
traceroute path is the set of ``"hop|address"`` items, web content the set
of ``"site|<body digest>"`` items. A failed fetch is the item
``"site|ERROR:<kind>"`` (e.g. ``"site-a|ERROR:timeout"``), so a failure
matches only the same failure at the same site, never a body. The
producer chooses the items; C3 only compares them.

Degenerate inputs never raise and never let a numpy/scipy warning out: the
number is NaN and ``passed`` is None, with ``reason`` saying why (no
samples, every run failed, zero reference mean, a single sample). Failed
runs (value None or not finite) are left out of every statistic and counted
in ``Stats.failed``.

Signs: ``error_abs = mean(source) − mean(reference)`` and ``error_rel =
error_abs / |mean(reference)|`` keep their sign (positive: the source
measured more); C1's ``rel`` is the unsigned criterion value.

numpy and scipy are imported inside the functions (the ``analysis`` extra),
so importing this module costs nothing.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Iterable, Mapping

from .samples import Sample

__all__ = [
    "C1_LATENCY", "C1_THROUGHPUT", "C2_ALPHA", "C3_JACCARD",
    "Stats", "C1", "C2", "C3", "Comparison",
    "describe", "c1", "c2", "jaccard", "c3", "compare", "default_c1_threshold",
]

#: C1 thresholds (relative difference of means)
C1_LATENCY = 0.10
C1_THROUGHPUT = 0.06
#: C2 significance level
C2_ALPHA = 0.05
#: C3 Jaccard threshold
C3_JACCARD = 0.9

NAN = float("nan")
# a criterion "≤ c" must hold for a difference of exactly c, which floating
# point (1 − 1.1 = −0.10000000000000009) would otherwise miss
_BOUNDARY_RTOL = 1e-9


def _at_most(x: float, limit: float) -> bool:
    return x <= limit or math.isclose(x, limit, rel_tol=_BOUNDARY_RTOL, abs_tol=1e-15)


def _json_ready(v: Any) -> Any:
    """NaN/inf → None, numpy scalars → Python, dataclasses → dicts."""
    if is_dataclass(v) and not isinstance(v, type):
        return {f.name: _json_ready(getattr(v, f.name)) for f in fields(v)}
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, int):
        return int(v)
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, (list, tuple)):
        return [_json_ready(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _json_ready(x) for k, x in v.items()}
    if hasattr(v, "item"):  # numpy scalar
        return _json_ready(v.item())
    return v


class _ToDict:
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN becomes None, nested results become dicts."""
        return _json_ready(self)


def _finite(values: Iterable[float | None]) -> tuple[list[float], int]:
    """The usable values, and how many were failures (None, NaN, inf)."""
    ok: list[float] = []
    failed = 0
    for v in values:
        if v is None:
            failed += 1
            continue
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise ValueError(f"not a number: {v!r}") from None
        if math.isfinite(f):
            ok.append(f)
        else:
            failed += 1
    return ok, failed


def _missing(name: str, n_failed: int) -> str:
    return (f"all {n_failed} {name} runs failed" if n_failed
            else f"no {name} samples")


# ---------------------------------------------------------------------------
# descriptive statistics

@dataclass(frozen=True, slots=True)
class Stats(_ToDict):
    """Summary of one source's values (failures excluded, counted)."""
    n: int
    mean: float
    sd: float       # sample standard deviation (ddof=1); NaN for n < 2
    median: float
    p99: float      # numpy's linear-interpolation percentile
    min: float
    max: float
    failed: int = 0


def describe(values: Iterable[float | None]) -> Stats:
    """n, mean, sd, median, p99, min, max of the finite values."""
    ok, failed = _finite(values)
    if not ok:
        return Stats(0, NAN, NAN, NAN, NAN, NAN, NAN, failed)
    import numpy as np
    a = np.asarray(ok, dtype=float)
    sd = float(a.std(ddof=1)) if a.size > 1 else NAN
    median, p99 = (float(x) for x in np.percentile(a, [50, 99]))
    return Stats(int(a.size), float(a.mean()), sd, median, p99,
                 float(a.min()), float(a.max()), failed)


# ---------------------------------------------------------------------------
# C1: relative difference of means

@dataclass(frozen=True, slots=True)
class C1(_ToDict):
    reference_mean: float
    other_mean: float
    rel: float              # |1 − other/reference|
    threshold: float
    passed: bool | None
    reason: str | None = None


def c1(reference: Iterable[float | None], other: Iterable[float | None],
       threshold: float) -> C1:
    """C1: ``|1 − mean(other)/mean(reference)| ≤ threshold``."""
    if not (isinstance(threshold, (int, float)) and math.isfinite(threshold)
            and threshold >= 0):
        raise ValueError(f"C1 threshold must be a finite number >= 0, not {threshold!r}")
    ref, ref_failed = _finite(reference)
    oth, oth_failed = _finite(other)
    rm = math.fsum(ref) / len(ref) if ref else NAN
    om = math.fsum(oth) / len(oth) if oth else NAN
    if not ref:
        return C1(rm, om, NAN, threshold, None, _missing("reference", ref_failed))
    if not oth:
        return C1(rm, om, NAN, threshold, None, _missing("compared", oth_failed))
    if rm == 0:
        return C1(rm, om, NAN, threshold, None,
                  "reference mean is zero: relative difference undefined")
    # |rm − om| / |rm| is |1 − om/rm| with one rounding less
    rel = abs(rm - om) / abs(rm)
    return C1(rm, om, rel, threshold, _at_most(rel, threshold))


# ---------------------------------------------------------------------------
# C2: two-sample Kolmogorov–Smirnov

@dataclass(frozen=True, slots=True)
class C2(_ToDict):
    d: float
    p: float
    alpha: float
    n_reference: int
    n_other: int
    passed: bool | None
    reason: str | None = None


def c2(reference: Iterable[float | None], other: Iterable[float | None],
       alpha: float = C2_ALPHA) -> C2:
    """C2: two-sided two-sample KS (scipy.stats.ks_2samp), passed when p ≥ α.

    With a single value on either side, or so few values that even fully
    separated samples give p > α (n = m = 3: p ≥ 0.1), the test cannot
    reject, so D and p are reported but ``passed`` is None. Identical constant
    samples give D = 0, p = 1 (passed): the distributions are the same.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"C2 alpha must be in (0, 1), not {alpha!r}")
    ref, ref_failed = _finite(reference)
    oth, oth_failed = _finite(other)
    n, m = len(ref), len(oth)
    if not ref:
        return C2(NAN, NAN, alpha, n, m, None, _missing("reference", ref_failed))
    if not oth:
        return C2(NAN, NAN, alpha, n, m, None, _missing("compared", oth_failed))
    from scipy.stats import ks_2samp
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = ks_2samp(ref, oth, alternative="two-sided", method="auto")
    d, p = float(res.statistic), float(res.pvalue)
    notes = [str(w.message) for w in caught]
    if n < 2 or m < 2:
        notes.insert(0, f"too few samples for a KS test (n={n}, m={m})")
        return C2(d, p, alpha, n, m, None, "; ".join(notes))
    if not math.isfinite(p):
        notes.insert(0, "scipy returned no p-value")
        return C2(d, p, alpha, n, m, None, "; ".join(notes))
    floor = _ks_p_floor(n, m)
    if floor > alpha:
        # even completely separated samples (D = 1) would pass: a "pass" would say nothing
        notes.insert(0, f"too few samples for KS to reject at α = {alpha:g} (n={n}, m={m}: smallest p {floor:.3g})")
        return C2(d, p, alpha, n, m, None, "; ".join(notes))
    # p ≥ α, an exact p of α passing despite rounding (2/20 → 0.09999999999999999)
    return C2(d, p, alpha, n, m, _at_most(alpha, p), "; ".join(notes) or None)


def _ks_p_floor(n: int, m: int) -> float:
    """The smallest two-sided p-value an exact two-sample KS test can give
    for sizes n and m (D = 1, the samples fully separated): 2 / C(n+m, n)."""
    if n + m > 60:
        return 0.0
    return min(1.0, 2 / math.comb(n + m, n))


# ---------------------------------------------------------------------------
# C3: Jaccard index of result sets

@dataclass(frozen=True, slots=True)
class C3(_ToDict):
    index: float
    threshold: float
    n_reference: int     # distinct items
    n_other: int
    n_common: int
    passed: bool | None
    reason: str | None = None


def _item_set(items: Iterable[Any]) -> set[str]:
    """Items, or per-run sets/lists of items, pooled into one set."""
    if isinstance(items, str):
        raise ValueError("C3 wants a collection of items, not one string")
    out: set[str] = set()
    for x in items:
        if x is None:
            continue
        if isinstance(x, str):
            out.add(x)
        elif isinstance(x, (set, frozenset, list, tuple)):
            for y in x:
                if not isinstance(y, str):
                    raise ValueError(f"C3 items must be strings, not {y!r}")
                out.add(y)
        else:
            raise ValueError(f"C3 items must be strings (or sets of them), not {x!r}")
    return out


def jaccard(a: Iterable[Any], b: Iterable[Any]) -> float:
    """|A ∩ B| / |A ∪ B|; NaN when both are empty (nothing to compare)."""
    sa, sb = _item_set(a), _item_set(b)
    union = len(sa | sb)
    return len(sa & sb) / union if union else NAN


def c3(a_sets_or_items: Iterable[Any], b: Iterable[Any],
       threshold: float = C3_JACCARD) -> C3:
    """C3: Jaccard index of the pooled item sets ≥ threshold.

    Either argument is the items (strings) seen over all runs, or one set
    of items per run; runs are pooled (union) before comparing.
    """
    if not (isinstance(threshold, (int, float)) and 0 <= threshold <= 1):
        raise ValueError(f"C3 threshold must be in [0, 1], not {threshold!r}")
    sa, sb = _item_set(a_sets_or_items), _item_set(b)
    common = len(sa & sb)
    if not sa and not sb:
        return C3(NAN, threshold, 0, 0, 0, None, "no items on either side")
    if not sa:
        return C3(0.0, threshold, 0, len(sb), 0, None, "no reference items")
    if not sb:
        return C3(0.0, threshold, len(sa), 0, 0, None, "no compared items")
    idx = common / len(sa | sb)
    # a ratio of integers: compare exactly (0.9 * union vs common) at the boundary
    return C3(idx, threshold, len(sa), len(sb), common, _at_most(threshold, idx))


# ---------------------------------------------------------------------------
# comparison of sources, per (vp, param)

@dataclass(frozen=True, slots=True)
class Comparison(_ToDict):
    """One source against the reference on one VP (and param)."""
    experiment: str
    vp: str
    param: str | None
    metric: str
    kind: str                    # "numeric" or "set"
    reference: str               # the reference source's name
    source: str
    reference_runs: int          # distinct runs with a sample
    source_runs: int
    reference_stats: Stats | None = None   # numeric only
    source_stats: Stats | None = None
    error_abs: float = NAN       # mean(source) − mean(reference)
    error_rel: float = NAN       # error_abs / |mean(reference)|
    c1: C1 | None = None
    c2: C2 | None = None
    c3: C3 | None = None
    truth: float | None = None
    reference_truth_error_abs: float = NAN   # mean(reference) − truth
    reference_truth_error_rel: float = NAN
    truth_error_abs: float = NAN             # mean(source) − truth
    truth_error_rel: float = NAN
    reasons: tuple[str, ...] = field(default=())


def default_c1_threshold(metric: str) -> float:
    """Throughput metrics (``mbps``, ``bps`` …) get 6 %, everything else 10 %."""
    m = metric.lower()
    return C1_THROUGHPUT if ("bps" in m or "throughput" in m) else C1_LATENCY


def _truth_for(truth: Any, vp: str, param: str | None) -> float | None:
    if truth is None:
        return None
    if not isinstance(truth, Mapping):
        raise ValueError("truth must be a mapping (vp, param) -> value or vp -> value")
    for key in ((vp, param), vp):
        if key in truth and truth[key] is not None:
            v = float(truth[key])
            return v if math.isfinite(v) else None
    return None


def _errors(value: float, base: float) -> tuple[float, float]:
    if not (math.isfinite(value) and math.isfinite(base)):
        return NAN, NAN
    diff = value - base
    return diff, (diff / abs(base) if base != 0 else NAN)


def _ordered(seq: Iterable[Any]) -> list[Any]:
    return list(dict.fromkeys(seq))


def compare(samples: Iterable[Sample], experiment: str, reference: str, *,
            threshold: float | None = None, truth: Any = None,
            kind: str | None = None, alpha: float = C2_ALPHA) -> list[Comparison]:
    """Every source against ``reference`` for each (vp, param) of ``experiment``.

    ``threshold`` is C1's (default by metric: 6 % throughput, 10 %
    otherwise) for numeric metrics, C3's (default 0.9) for set metrics.
    ``kind`` ("numeric"/"set") defaults to what the samples carry (items →
    set). ``truth`` maps ``(vp, param)`` or ``vp`` to the true value.
    Order: VPs, params and sources as they first appear in ``samples``.
    A source with no samples on a VP still gets a row (with a reason).
    """
    rows = [s for s in samples if s.experiment == experiment]
    if not rows:
        raise ValueError(f"no samples for experiment {experiment!r}")
    sources = _ordered(s.source for s in rows)
    if reference not in sources:
        raise ValueError(f"reference source {reference!r} has no samples in "
                         f"{experiment!r} (sources: {', '.join(sources)})")
    has_items = any(s.item is not None for s in rows)
    has_values = any(s.value is not None for s in rows)
    if kind is None:
        kind = "set" if has_items else "numeric"
    if kind not in ("numeric", "set"):
        raise ValueError(f"kind must be 'numeric' or 'set', not {kind!r}")
    if kind == "numeric" and has_items:
        raise ValueError(f"{experiment!r}: numeric comparison of samples that carry items")
    if kind == "set" and has_values:
        raise ValueError(f"{experiment!r}: set comparison of samples that carry values")

    groups: dict[tuple[str, str | None, str], dict[str, list[Sample]]] = {}
    for s in rows:
        groups.setdefault((s.vp, s.param, s.metric), {}).setdefault(s.source, []).append(s)
    others = [src for src in sources if src != reference]

    out: list[Comparison] = []
    for (vp, param, metric), by_source in groups.items():
        ref_rows = by_source.get(reference, [])
        t = _truth_for(truth, vp, param) if kind == "numeric" else None
        for src in others:
            src_rows = by_source.get(src, [])
            base = dict(experiment=experiment, vp=vp, param=param, metric=metric,
                        kind=kind, reference=reference, source=src,
                        reference_runs=len({s.run for s in ref_rows}),
                        source_runs=len({s.run for s in src_rows}))
            if kind == "set":
                r = c3([s.item for s in ref_rows], [s.item for s in src_rows],
                       C3_JACCARD if threshold is None else threshold)
                out.append(Comparison(**base, c3=r,
                                      reasons=(r.reason,) if r.reason else ()))
                continue
            ref_vals = [s.value for s in ref_rows]
            src_vals = [s.value for s in src_rows]
            rs, ss = describe(ref_vals), describe(src_vals)
            r1 = c1(ref_vals, src_vals,
                    default_c1_threshold(metric) if threshold is None else threshold)
            r2 = c2(ref_vals, src_vals, alpha)
            err_abs, err_rel = _errors(ss.mean, rs.mean)
            extra: dict[str, Any] = {}
            if t is not None:
                ra, rr = _errors(rs.mean, t)
                sa, sr = _errors(ss.mean, t)
                extra = dict(truth=t, reference_truth_error_abs=ra,
                             reference_truth_error_rel=rr,
                             truth_error_abs=sa, truth_error_rel=sr)
            reasons = _ordered(x for x in (r1.reason, r2.reason) if x)
            out.append(Comparison(**base, reference_stats=rs, source_stats=ss,
                                  error_abs=err_abs, error_rel=err_rel, c1=r1, c2=r2,
                                  reasons=tuple(reasons), **extra))
    return out
