"""Paired comparison of two models scored on the same queries.

Both models' per-query metrics are paired by query, so the comparison works on the
per-query differences d = a - b: their mean, its standard error sd(d) / sqrt(n), a bootstrap
confidence interval on the mean, and the smallest difference the queries could detect.

The interval is the bias-corrected and accelerated (BCa) bootstrap of `scipy.stats.bootstrap`
over the differences. Resampling the differences is the paired bootstrap: each resample
keeps both models' values of a query together. BCa rather than percentile because per-query
differences of ranking metrics are skewed and heaped at 0 (a query both models miss adds an
exact 0), and BCa corrects the interval's ends for skew and for the bias of the bootstrap
distribution, where the percentile interval assumes neither. Where BCa is undefined (its
acceleration is 0/0 on some near-degenerate samples) the percentile interval is returned and
`method` says so.

Degenerate inputs give defined results instead of errors: with no queries everything is NaN;
with one query the mean is that difference and the standard error, interval and minimal
detectable difference are NaN (no spread can be estimated); when all differences are equal
up to rounding (n >= 2) the interval is (d, d), d their mean, which excludes 0 exactly when
d != 0, and the standard error is 0 (or the rounding's).
`excludes_zero` is False whenever the interval is NaN.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats

# Differences spread by no more than this, relative to their size, count as all equal.
_SAME = 1e-12


def paired_difference(
    a: np.ndarray,
    b: np.ndarray,
    confidence: float = 0.95,
    resamples: int = 10_000,
    seed: int = 0,
) -> dict:
    """Mean of the paired differences a - b of (n,) per-query metrics, with its interval.

    Returns a dict: n, mean_difference, standard_error (sample sd of the differences over
    sqrt(n)), low and high (the BCa bootstrap interval at `confidence` from `resamples`
    resamples of the differences, seeded by `seed`, so equal inputs give equal intervals),
    excludes_zero, minimal_detectable_difference (at alpha = 1 - confidence, power 0.8),
    confidence, resamples and method ("BCa", or "percentile" where BCa is undefined).
    Degenerate inputs: see the module docstring.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"a and b must be 1-D of the same length, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("per-query metrics must be finite")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    differences = a - b
    n = len(differences)
    mean = float(differences.mean()) if n else float("nan")
    se = _standard_error(differences)
    method = "BCa"
    if n < 2:
        low = high = float("nan")
    elif np.ptp(differences) <= _SAME * max(1.0, float(np.abs(differences).max())):
        # Every resample has the same mean (up to rounding, as in (b + c) - b); BCa's
        # acceleration would divide 0 by 0.
        low = high = mean
    else:
        low, high = _bootstrap(differences, confidence, resamples, seed, "BCa")
        if np.isnan(low) or np.isnan(high):
            # BCa is undefined on some near-degenerate samples; the percentile interval is not.
            method = "percentile"
            low, high = _bootstrap(differences, confidence, resamples, seed, method)
    return {
        "n": n,
        "mean_difference": mean,
        "standard_error": se,
        "low": low,
        "high": high,
        "excludes_zero": bool(low > 0.0 or high < 0.0),
        "minimal_detectable_difference": minimal_detectable_difference(
            differences, alpha=1.0 - confidence
        ),
        "confidence": confidence,
        "resamples": resamples,
        "method": method,
    }


def minimal_detectable_difference(
    differences_or_std: np.ndarray | float,
    n: int | None = None,
    alpha: float = 0.05,
    power: float = 0.8,
) -> float:
    """The smallest true mean difference a two-sided paired z-test at level `alpha` detects
    with probability `power`: (z_{1 - alpha/2} + z_{power}) * se, se = sd / sqrt(n).

    differences_or_std: the (n,) per-query differences (sd with ddof=1, n their length
    unless given) or their standard deviation as a number (then n is required).
    NaN for n < 2. At the defaults the factor is 1.960 + 0.842 = 2.802.
    """
    if not (0.0 < alpha < 1.0 and 0.0 < power < 1.0):
        raise ValueError(f"alpha and power must lie in (0, 1), got {alpha} and {power}")
    if np.ndim(differences_or_std) == 0:
        if n is None:
            raise ValueError("n is required when a standard deviation is given")
        std = float(differences_or_std)
    else:
        differences = np.asarray(differences_or_std, dtype=np.float64)
        n = len(differences) if n is None else n
        std = float(differences.std(ddof=1)) if len(differences) >= 2 else float("nan")
    if n < 2:
        return float("nan")
    factor = stats.norm.ppf(1.0 - alpha / 2.0) + stats.norm.ppf(power)
    return float(factor * std / np.sqrt(n))


def _standard_error(differences: np.ndarray) -> float:
    n = len(differences)
    if n < 2:
        return float("nan")
    return float(differences.std(ddof=1) / np.sqrt(n))


def _bootstrap(
    differences: np.ndarray, confidence: float, resamples: int, seed: int, method: str
) -> tuple[float, float]:
    with warnings.catch_warnings():
        # A degenerate BCa sample warns and returns NaN; the caller handles the NaN.
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        interval = stats.bootstrap(
            (differences,),
            np.mean,
            n_resamples=resamples,
            confidence_level=confidence,
            method=method,
            rng=np.random.default_rng(seed),
        ).confidence_interval
    return float(interval.low), float(interval.high)
