"""Robustness probes: mixedjax used by a demanding user (a small fuzzer).

Each probe fits or evaluates a small model through the public API
(``mixedjax.lmer``, ``mixedjax.LMM.from_formula(...).objective`` and
``.eager.value``, ``mixedjax.lme``, ``refit_many``, ``bootstrap`` and the command
line ``python -m mixedjax``) and is judged

* PASS when the outcome is right: the right numbers (checked against an
  equivalent well-conditioned fit, an invariance, or lme4's published values), or
  a clean ``ValueError``/``TypeError`` whose message names the offending column,
  term or argument;
* FAIL on a raw exception of any other type (LinAlgError, FloatingPointError,
  UFuncTypeError, patsy or JAX errors, KeyError, IndexError, ...), NaN or inf in
  fixef/theta/objective/sigma without an error, ``converged=True`` with an
  iteration-limit message, a silently wrong number, or an API the version lacks
  ("missing API").  Warnings are recorded and shown, never a failure.

Categories: 1 uniform prior weights, 2 shifted/scaled responses, 3 uncentred random
slopes, 4 formula overflow and non-finite model columns, 5 column types and
malformed data, 6 degenerate responses, 7 bad arguments, 8 nested and crossed
designs, 9 the criterion at the fitted theta, 10 batched refits, 11 the command line.
Data: ``mixedjax.datasets`` and ``tests/reference/repro/*.csv`` of this checkout,
plus small random data with fixed seeds.

Run (from anywhere; the mixedjax first on ``sys.path`` is probed)::

    python benchmarks/probes.py            # all probes
    python benchmarks/probes.py weights    # only categories/names containing a word

It prints one line per probe (category, name, PASS/FAIL, reason) and a table of
counts per category with the total "N of M probes passed".  The exit status is 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

import mixedjax

REPRO = Path(__file__).resolve().parents[1] / "tests" / "reference" / "repro"

# lme4 1.1 values (REML criterion unless said otherwise).
SLEEP_SLOPE = 1743.6282722       # Reaction ~ Days + (Days | Subject)
SLEEP_SLOPE_ML = 1751.9393444    # the same, ML deviance
PENICILLIN = 330.8605889         # diameter ~ 1 + (1 | plate) + (1 | sample)
XBIG_CENTRED = -7.755369         # repro/xbig_slope.csv, x centred
PHASEC_LME4 = 7.187803           # repro/phaseC_min.csv, where lme4 stops
HIGHR2_THETA = 1.2791222933900102
HIGHR2_VALUE = -172.05167589957013629   # 50-digit reference at HIGHR2_THETA


# ----------------------------------------------------------------------------------
# Probe machinery
# ----------------------------------------------------------------------------------
class Fail(Exception):
    """A probe's expectation not met."""


class MissingAPI(Exception):
    """The probed mixedjax lacks the API a probe uses."""


PROBES: list[tuple[str, str, object]] = []


def probe(category: str, name: str):
    def register(fn):
        PROBES.append((category, name, fn))
        return fn
    return register


def check(cond, reason: str):
    if not cond:
        raise Fail(reason)


def api(obj, attr: str):
    """``getattr`` that turns a missing attribute into MissingAPI."""
    try:
        return getattr(obj, attr)
    except AttributeError:
        raise MissingAPI(f"{getattr(obj, '__name__', type(obj).__name__)}.{attr}") from None


def first_line(e: BaseException, limit: int = 110) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    s = lines[0] if lines else ""
    return s if len(s) <= limit else s[:limit - 3] + "..."


def is_clean(e: BaseException) -> bool:
    """A plain ValueError/TypeError, or a mixedjax subclass of one (not numpy's
    LinAlgError or UFuncTypeError, not a JAX or pandas subclass)."""
    if type(e) in (ValueError, TypeError):
        return True
    return isinstance(e, (ValueError, TypeError)) and \
        type(e).__module__.split(".")[0] == "mixedjax"


def expect_error(fn, names, accept=None):
    """``fn()`` must raise a clean ValueError/TypeError naming one of ``names``
    (case-insensitive), or, where ``accept`` is given, return a result that
    ``accept`` checks (raising Fail when wrong)."""
    names = [names] if isinstance(names, str) else list(names)
    try:
        res = fn()
    except (ValueError, TypeError) as e:
        if not is_clean(e):
            raise
        msg = str(e)
        check(any(n.lower() in msg.lower() for n in names),
              f"{type(e).__name__} does not name {names}: {first_line(e)}")
        return f"{type(e).__name__}: {first_line(e, 80)}"
    if accept is None:
        raise Fail(f"no error raised (expected one naming {names[0]!r})")
    note = accept(res)
    return "fit: " + (note or "right numbers")


def sane(m, what: str = "fit"):
    """No NaN/inf without an error; no converged=True at the iteration limit."""
    for attr in ("fixef", "theta", "objective", "sigma"):
        if not hasattr(m, attr):
            continue
        v = np.asarray(getattr(m, attr), dtype=float)
        check(np.all(np.isfinite(v)), f"{what}: non-finite {attr} without an error: {v}")
    info = getattr(m, "optinfo", {}) or {}
    msg = str(info.get("message", ""))
    check(not (getattr(m, "converged", False) and ("limit" in msg.lower()
                                                    or "iteration" in msg.lower()
                                                    and "max" in msg.lower())),
          f"{what}: converged=True with message {msg!r}")
    return m


def close(a, b, rtol=1e-6, atol=0.0, what="value"):
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    check(a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}")
    ok = np.all(np.isfinite(a)) and np.allclose(a, b, rtol=rtol, atol=atol)
    if not ok:
        err = np.max(np.abs(a - b)) if a.size else 0.0
        raise Fail(f"{what}: {np.array2string(a.ravel()[:4], precision=8)} vs "
                   f"{np.array2string(b.ravel()[:4], precision=8)} (max err {err:.2e})")


def lmer(formula, data, **kw):
    return mixedjax.lmer(formula, data, **kw)


def fit_ok(formula, data, **kw):
    """A fit that must succeed: sane and converged."""
    m = sane(lmer(formula, data, **kw))
    check(m.converged, f"not converged: {m.optinfo.get('message')}")
    return m


def no_worse_than_restart(m, formula, data, tol=1e-6, **kw):
    """The fit's objective is no worse than a second fit from theta0 = ones."""
    other = sane(lmer(formula, data, theta0=np.ones(len(m.theta)), **kw), "restart")
    check(m.objective <= other.objective + tol + 1e-10 * abs(other.objective),
          f"objective {m.objective:.8f} > {other.objective:.8f} from theta0=ones")
    return other


# ----------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------
_CACHE: dict = {}


def cached(key, make):
    if key not in _CACHE:
        _CACHE[key] = make()
    return _CACHE[key]


def sleep() -> pd.DataFrame:
    return cached("sleep", lambda: mixedjax.datasets.load("sleepstudy")).copy()


def repro(name: str) -> pd.DataFrame:
    return cached(name, lambda: pd.read_csv(REPRO / name)).copy()


def base_fit(key, formula, data_fn, **kw):
    return cached(("fit", key), lambda: fit_ok(formula, data_fn(), **kw))


def small(seed=0, n=60, ng=6) -> pd.DataFrame:
    """y, dose, g (ng groups), n rows: a random-intercept-and-slope design."""
    rng = np.random.default_rng(seed)
    g = np.arange(n) % ng
    dose = rng.uniform(1.0, 3.0, n)
    u0 = rng.normal(size=ng)
    u1 = rng.normal(scale=0.5, size=ng)
    y = 2.0 + 0.7 * dose + u0[g] + u1[g] * dose + rng.normal(scale=0.6, size=n)
    return pd.DataFrame({"resp": y, "dose": dose, "grp": [f"G{v}" for v in g]})


def nested(seed, n=120, na=4, nb=3, shift=0.0) -> pd.DataFrame:
    """a (na levels), b within a (nb), x1..x3 (shifted by ``shift``), y."""
    rng = np.random.default_rng(seed)
    a = rng.integers(0, na, n)
    b = rng.integers(0, nb, n)
    X = rng.normal(size=(3, n))
    ua, uab = rng.normal(size=na), rng.normal(scale=0.6, size=(na, nb))
    sl = rng.normal(scale=0.4, size=(3, na))
    y = 1.0 + 0.5 * X[0] + ua[a] + uab[a, b] + sum(sl[j][a] * X[j] for j in range(3)) \
        + rng.normal(size=n)
    d = pd.DataFrame({"a": [f"a{v}" for v in a], "b": [f"b{v}" for v in b], "y": y})
    for j in range(3):
        d[f"x{j + 1}"] = X[j] + shift
    return d


def three_level(seed, n=150) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 3, n)
    b = rng.integers(0, 3, n)
    c = rng.integers(0, 2, n)
    ua, ub, uc = (rng.normal(size=3), rng.normal(scale=0.7, size=(3, 3)),
                  rng.normal(scale=0.5, size=(3, 3, 2)))
    x = rng.normal(size=n)
    y = 3.0 + x + ua[a] + ub[a, b] + uc[a, b, c] + rng.normal(scale=0.8, size=n)
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{v}" for v in a],
                         "b": [f"b{v}" for v in b], "c": [f"c{v}" for v in c]})


def crossed(seed, n=90, na=6, nb=5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, na, n)
    b = rng.integers(0, nb, n)
    x = rng.normal(size=n)
    y = (1.0 + 0.3 * x + rng.normal(size=na)[a] + rng.normal(scale=0.8, size=nb)[b]
         + rng.normal(scale=0.5, size=na)[a] * x + rng.normal(scale=0.7, size=n))
    return pd.DataFrame({"y": y, "x": x, "a": [f"a{v}" for v in a],
                         "b": [f"b{v}" for v in b]})


# ==================================================================================
# 1. Uniform prior weights: the unweighted fixef and objective
# ==================================================================================
def _weights_probe(formula, w, key):
    def run():
        d = repro("D.csv")
        base = base_fit(key, formula, lambda: repro("D.csv"))
        m = fit_ok(formula, d, weights=np.full(len(d), w))
        close(m.fixef, base.fixef, rtol=1e-6, atol=1e-8, what="fixef")
        close(m.objective, base.objective, rtol=1e-8, atol=1e-8, what="objective")
        close(m.sigma / np.sqrt(w), base.sigma, rtol=1e-5, what="sigma/sqrt(w)")
    return run


for _w in (1e-20, 1e-50, 1e-300, 1e-5, 1e5, 1e100, 1e250):
    probe("1 weights", f"uniform w={_w:g} (1|g)")(
        _weights_probe("y ~ x + (1|g)", _w, "D_int"))
for _w in (1e-20, 1e-300, 1e250):
    probe("1 weights", f"uniform w={_w:g} (x|g)")(
        _weights_probe("y ~ x + (x|g)", _w, "D_slope"))


@probe("1 weights", "uniform w=1e305 -> clear ValueError")
def _():
    d = repro("D.csv")
    return expect_error(lambda: lmer("y ~ x + (1|g)", d, weights=np.full(len(d), 1e305)),
                        ["weight", "too large"])


@probe("1 weights", "w=1e-300 and 1e-290 mixed: right ratio")
def _():
    # Weights 1 : 10**10 relative, both tiny: the same fit as weights 1 and 1e10.
    d = repro("D.csv")
    rel = np.where(np.arange(len(d)) % 2 == 0, 1.0, 1e10)
    base = fit_ok("y ~ x + (1|g)", d, weights=rel)
    return expect_error(lambda: lmer("y ~ x + (1|g)", d, weights=rel * 1e-300),
                        ["weight", "too small"],
                        accept=lambda m: close(sane(m).fixef, base.fixef, rtol=1e-6,
                                               atol=1e-8, what="fixef"))


# ==================================================================================
# 2. Responses shifted and scaled
# ==================================================================================
SLOPE = "Reaction ~ Days + (Days|Subject)"


def _sleep_base():
    return base_fit("sleep_slope", SLOPE, sleep)


def _shift_probe(c):
    def run():
        base = _sleep_base()
        d = sleep()
        m = fit_ok(SLOPE, d.assign(Reaction=d.Reaction + c))
        close(m.theta, base.theta, rtol=1e-6, atol=1e-6, what="theta")
        close(m.fixef.iloc[0] - c, base.fixef.iloc[0], rtol=1e-6, what="intercept - c")
        close(m.fixef.iloc[1], base.fixef.iloc[1], rtol=1e-6, what="slope")
        close(m.objective, base.objective, rtol=1e-8, what="objective")
    return run


for _c in (1e4, 1e6, 1e8, -1e8):
    probe("2 response", f"Reaction + {_c:g}")(_shift_probe(_c))


def _scale_probe(c, formula=SLOPE, key="sleep_slope", reml=True):
    def run():
        base = base_fit(key, formula, sleep, reml=reml)
        d = sleep()
        m = fit_ok(formula, d.assign(Reaction=d.Reaction * c), reml=reml)
        close(m.theta, base.theta, rtol=1e-6, atol=1e-6, what="theta")
        close(m.fixef / c, base.fixef, rtol=1e-6, what="fixef / c")
        close(m.sigma / abs(c), base.sigma, rtol=1e-6, what="sigma / |c|")
        n, p = 180, (0 if not reml else 2)
        shift = (n - p) * 2.0 * np.log(abs(c))
        close(m.objective - shift, base.objective, rtol=1e-8, what="objective - (n-p) log c^2")
    return run


for _c in (1e-100, 1e-50, 1e50, 1e100):
    probe("2 response", f"Reaction * {_c:g}")(_scale_probe(_c))
probe("2 response", "Reaction * -1e30 (ML)")(
    _scale_probe(-1e30, key="sleep_slope_ml", reml=False))


def _extreme_probe(c):
    def run():
        base = _sleep_base()
        d = sleep()

        def accept(m):
            sane(m)
            close(m.fixef / c, base.fixef, rtol=1e-6, what="fixef / c")
            close(m.theta, base.theta, rtol=1e-5, atol=1e-5, what="theta")
        return expect_error(lambda: lmer(SLOPE, d.assign(Reaction=d.Reaction * c)),
                            ["reaction", "response"], accept=accept)
    return run


for _c in (1e152, 1e200, 1e-172, 1e-200, 1e-300):
    probe("2 response", f"|y| out of range: Reaction * {_c:g}")(_extreme_probe(_c))


@probe("2 response", "y with an inf entry -> clear error")
def _():
    d = sleep()
    d.loc[3, "Reaction"] = np.inf
    return expect_error(lambda: lmer(SLOPE, d), ["reaction"])


# ==================================================================================
# 3. Uncentred random slopes: the centred model's optimum
# ==================================================================================
def _sleep_shift_slope(c, reml=True):
    def run():
        d = sleep()
        m = fit_ok(SLOPE, d.assign(Days=d.Days + c), reml=reml)
        ref = SLEEP_SLOPE if reml else SLEEP_SLOPE_ML
        close(m.objective, ref, rtol=0, atol=1e-4, what="objective vs lme4 (unshifted)")
        close(m.fixef["Days"], 10.467286, rtol=0, atol=1e-4, what="Days effect")
    return run


for _c in (1e3, 1e4, 1e6, -1e4):
    probe("3 uncentred", f"sleepstudy Days{_c:+g} in (Days|Subject)")(_sleep_shift_slope(_c))
probe("3 uncentred", "sleepstudy Days+1e4, ML")(_sleep_shift_slope(1e4, reml=False))


def _random_shift_slope(c, seed=3):
    def run():
        d = small(seed, n=100, ng=10)
        f = "resp ~ dose + (dose|grp)"
        centred = fit_ok(f, d.assign(dose=d.dose - d.dose.mean()))
        m = fit_ok(f, d.assign(dose=d.dose + c))
        close(m.objective, centred.objective, rtol=0, atol=1e-4, what="objective vs centred")
        close(m.fixef["dose"], centred.fixef["dose"], rtol=1e-5, what="dose effect")
    return run


for _c in (1e3, 1e4, 1e6):
    probe("3 uncentred", f"random data dose+{_c:g} in (dose|grp)")(_random_shift_slope(_c))


@probe("3 uncentred", "two slopes, x1+1e4 in (x1+x2|a)")
def _():
    d = nested(11, n=150, na=8)
    f = "y ~ x1 + x2 + (x1 + x2 | a)"
    centred = fit_ok(f, d)
    m = fit_ok(f, d.assign(x1=d.x1 + 1e4))
    close(m.objective, centred.objective, rtol=0, atol=1e-4, what="objective vs unshifted")


@probe("3 uncentred", "repro xbig_slope.csv (x|g)")
def _():
    d = repro("xbig_slope.csv")
    m = fit_ok("y ~ x + (x | g)", d)
    close(m.objective, XBIG_CENTRED, rtol=0, atol=1e-4, what="objective vs centred optimum")


@probe("3 uncentred", "repro phaseC_min.csv (x0|g0)")
def _():
    # The centred optimum is exact to ~1e-4 only (intercept variance 1e9 residual
    # variances); lme4 stops at 7.1878.
    d = repro("phaseC_min.csv")
    m = fit_ok("y ~ x0 + (x0 | g0)", d)
    # The reference need not report convergence (it is judged elsewhere).
    centred = sane(lmer("y ~ x0 + (x0 | g0)", d.assign(x0=d.x0 - d.x0.mean())))
    check(m.objective <= PHASEC_LME4 + 1e-6, f"objective {m.objective} above lme4's 7.1878")
    close(m.objective, centred.objective, rtol=0, atol=1e-3, what="objective vs centred")


# ==================================================================================
# 4. Formula overflow and non-finite model columns
# ==================================================================================
def _err_probe(formula, mutate, names, accept=None, seed=5):
    def run():
        d = mutate(small(seed))
        acc = None if accept is None else (lambda m: accept(m, d))
        return expect_error(lambda: lmer(formula, d), names, accept=acc)
    return run


def _set(col, value, row=0):
    def mutate(d):
        d.loc[row, col] = value
        return d
    return mutate


def _drop_row_fit(formula, row=0):
    """Accept a fit that dropped ``row`` (as R's na.omit of NaN) and equals the fit
    without it."""
    def accept(m, d):
        sane(m)
        check(getattr(m, "n_dropped", 1) == 1, f"n_dropped = {getattr(m, 'n_dropped', None)}")
        ref = fit_ok(formula.replace("log(dose)", "ldose"),
                     d.drop(index=row).assign(ldose=lambda e: np.log(e.dose)))
        close(m.objective, ref.objective, rtol=1e-9, what="objective vs row dropped")
    return accept


probe("4 formula", "I(dose**2) with dose=1e200")(
    _err_probe("resp ~ I(dose**2) + (1|grp)", _set("dose", 1e200), ["dose"]))
probe("4 formula", "I(dose**2) in a random slope, dose=1e200")(
    _err_probe("resp ~ 1 + (I(dose**2)|grp)", _set("dose", 1e200), ["dose"]))
probe("4 formula", "log(dose) with dose=0")(
    _err_probe("resp ~ log(dose) + (1|grp)", _set("dose", 0.0), ["dose"]))
probe("4 formula", "log(dose) with dose=-1 (NaN: error or row dropped)")(
    _err_probe("resp ~ log(dose) + (1|grp)", _set("dose", -1.0), ["dose"],
               accept=_drop_row_fit("resp ~ log(dose) + (1|grp)")))
probe("4 formula", "I(1/dose) with dose=0")(
    _err_probe("resp ~ I(1/dose) + (1|grp)", _set("dose", 0.0), ["dose"]))
probe("4 formula", "exp(dose) with dose=1000")(
    _err_probe("resp ~ exp(dose) + (1|grp)", _set("dose", 1000.0), ["dose"]))
probe("4 formula", "I(dose*1e300) with dose=1e10")(
    _err_probe("resp ~ I(dose*1e300) + (1|grp)", _set("dose", 1e10), ["dose"]))
probe("4 formula", "covariate dose=inf")(
    _err_probe("resp ~ dose + (1|grp)", _set("dose", np.inf), ["dose"]))
probe("4 formula", "slope covariate dose=-inf in (dose|grp)")(
    _err_probe("resp ~ dose + (dose|grp)", _set("dose", -np.inf), ["dose"]))
probe("4 formula", "scale(dose) of a constant dose")(
    _err_probe("resp ~ scale(dose) + (1|grp)", lambda d: d.assign(dose=2.0), ["dose", "scale"]))


def _covariate_scale(c):
    def run():
        d = small(5)
        base = fit_ok("resp ~ dose + (1|grp)", d)

        def accept(m):
            sane(m)
            check("dose" in m.fixef.index, f"column 'dose' dropped from the fit "
                  f"(fixef {dict(m.fixef)}, objective {m.objective:.4f} vs {base.objective:.4f})")
            close(m.fixef["dose"] * c, base.fixef["dose"], rtol=1e-6, what="dose effect * c")
            close(m.fixef.iloc[0], base.fixef.iloc[0], rtol=1e-6, what="intercept")
            # REML's log|X'V^-1 X| moves by 2 log c when a column is scaled by c.
            close(m.objective, base.objective + 2 * np.log(c), rtol=1e-8, what="objective")
        return expect_error(lambda: lmer("resp ~ dose + (1|grp)", d.assign(dose=d.dose * c)),
                            ["dose"], accept=accept)
    return run


for _c in (1e200, 1e-200):
    probe("4 formula", f"covariate dose * {_c:g}")(_covariate_scale(_c))


@probe("4 formula", "rank-deficient X (dose2 = 2*dose)")
def _():
    d = small(5)
    d["dose2"] = 2.0 * d.dose
    ref = fit_ok("resp ~ dose + (1|grp)", d)

    def accept(m):
        sane(m)
        close(m.objective, ref.objective, rtol=1e-8, what="objective vs model without dose2")
        fitted = np.asarray(m.fixef, float)
        check(np.all(np.isfinite(fitted)), "non-finite fixef")
    return expect_error(lambda: lmer("resp ~ dose + dose2 + (1|grp)", d),
                        ["dose2", "rank"], accept=accept)


# ==================================================================================
# 5. Column types and malformed data
# ==================================================================================
def _type_probe(mutate, formula, names, accept=None, seed=7):
    def run():
        d = mutate(small(seed))
        acc = None if accept is None else (lambda m: accept(m, d))
        return expect_error(lambda: lmer(formula, d), names, accept=acc)
    return run


F5 = "resp ~ dose + (1|grp)"


def _same_as_numeric(col):
    def accept(m, d):
        sane(m)
        ref = fit_ok(F5, d.assign(**{col: d[col].astype(float)}))
        close(m.objective, ref.objective, rtol=1e-9, what="objective vs float column")
        close(np.asarray(m.fixef, float), np.asarray(ref.fixef, float), rtol=1e-7,
              what="fixef vs float column")
    return accept


probe("5 data", "complex response")(
    _type_probe(lambda d: d.assign(resp=d.resp + 1j), F5, ["resp", "complex"]))
probe("5 data", "complex covariate")(
    _type_probe(lambda d: d.assign(dose=d.dose * (1 + 1j)), F5, ["dose", "complex"]))
probe("5 data", "string response")(
    _type_probe(lambda d: d.assign(resp=np.where(d.resp > 3, "hi", "lo")), F5, ["resp"]))
probe("5 data", "boolean response")(
    _type_probe(lambda d: d.assign(resp=d.resp > d.resp.median()), F5, ["resp"],
                accept=_same_as_numeric("resp")))
probe("5 data", "object-dtype numeric covariate")(
    _type_probe(lambda d: d.assign(dose=d.dose.astype(object)), F5, ["dose"],
                accept=_same_as_numeric("dose")))
probe("5 data", "object-dtype numeric response")(
    _type_probe(lambda d: d.assign(resp=d.resp.astype(object)), F5, ["resp"],
                accept=_same_as_numeric("resp")))
probe("5 data", "all-NaN covariate in the formula")(
    _type_probe(lambda d: d.assign(dose=np.nan), F5, ["dose", "missing", "no rows", "0 rows",
                                                      "no complete", "nan"]))


@probe("5 data", "all-NaN column not in the formula is ignored")
def _():
    d = small(7)
    ref = fit_ok(F5, d)
    m = fit_ok(F5, d.assign(junk=np.nan))
    close(m.objective, ref.objective, rtol=1e-12, what="objective")
    check(m.nobs == len(d), f"nobs {m.nobs} != {len(d)}")


def _one_level_accept(m, d):
    sane(m)
    close(m.fixef["dose"], np.polyfit(d.dose, d.resp, 1)[0], rtol=1e-6,
          what="dose effect vs OLS")


probe("5 data", "grouping factor with one level")(
    _type_probe(lambda d: d.assign(grp="only"), F5, ["grp", "level"], accept=_one_level_accept))
probe("5 data", "grouping factor with as many levels as rows")(
    _type_probe(lambda d: d.assign(grp=[f"r{i}" for i in range(len(d))]), F5,
                ["grp", "level"], accept=_one_level_accept))
probe("5 data", "empty data frame with the columns")(
    _type_probe(lambda d: d.iloc[:0], F5, ["row", "empty", "observation"]))
probe("5 data", "DataFrame() without columns")(
    _type_probe(lambda d: pd.DataFrame(), F5, ["resp", "dose", "grp", "column", "empty"]))
probe("5 data", "missing fixed-effects column")(
    _type_probe(lambda d: d.drop(columns="dose"), F5, ["dose"]))
probe("5 data", "missing grouping column")(
    _type_probe(lambda d: d.drop(columns="grp"), F5, ["grp"]))
probe("5 data", "missing response column")(
    _type_probe(lambda d: d.drop(columns="resp"), F5, ["resp"]))


def _na_probe(col, value, rows=(0, 7, 13)):
    def run():
        d = small(7)
        d[col] = d[col].astype(object) if value is None else d[col]
        for r in rows:
            d.loc[r, col] = value
        ref = fit_ok(F5, small(7).drop(index=list(rows)).reset_index(drop=True))
        m = fit_ok(F5, d)
        check(m.nobs == len(d) - len(rows), f"nobs {m.nobs}, expected {len(d) - len(rows)}")
        check(api(m, "n_dropped") == len(rows), f"n_dropped {m.n_dropped} != {len(rows)}")
        close(m.objective, ref.objective, rtol=1e-10, what="objective vs rows removed")
        close(m.fixef, ref.fixef, rtol=1e-8, what="fixef vs rows removed")
    return run


probe("5 data", "NaN in the group column: dropped and counted")(_na_probe("grp", np.nan))
probe("5 data", "None in the group column: dropped and counted")(_na_probe("grp", None))
probe("5 data", "NaN in the response: dropped and counted")(_na_probe("resp", np.nan))
probe("5 data", "NaN in the covariate: dropped and counted")(_na_probe("dose", np.nan))


@probe("5 data", "pd.NA in a nullable Float64 covariate")
def _():
    d = small(7)
    d["dose"] = d.dose.astype("Float64")
    d.loc[[2, 5], "dose"] = pd.NA
    ref = fit_ok(F5, small(7).drop(index=[2, 5]))
    m = expect_error(lambda: lmer(F5, d), ["dose"], accept=lambda m: close(
        sane(m).objective, ref.objective, rtol=1e-10, what="objective vs rows removed"))
    return m


@probe("5 data", "categorical group with unused levels")
def _():
    d = small(7)
    ref = fit_ok(F5, d)
    cats = sorted(d.grp.unique()) + ["unused1", "unused2"]
    m = fit_ok(F5, d.assign(grp=pd.Categorical(d.grp, categories=cats)))
    close(m.objective, ref.objective, rtol=1e-12, what="objective")
    check(m.ngroups["grp"] == 6, f"ngroups {m.ngroups}")


@probe("5 data", "backticked column name with a space")
def _():
    d = small(7)
    ref = fit_ok(F5, d)
    m = fit_ok("resp ~ `my dose` + (1|grp)", d.rename(columns={"dose": "my dose"}))
    close(m.objective, ref.objective, rtol=1e-12, what="objective")


@probe("5 data", "data as a NumPy array -> TypeError naming data")
def _():
    return expect_error(lambda: lmer(F5, small(7).to_numpy()), ["data", "dataframe"])


@probe("5 data", "formula not a string")
def _():
    return expect_error(lambda: lmer(123, small(7)), ["formula"])


@probe("5 data", "formula without a random term")
def _():
    return expect_error(lambda: lmer("resp ~ dose", small(7)), ["random"])


@probe("5 data", "unbalanced parenthesis in the formula")
def _():
    return expect_error(lambda: lmer("resp ~ dose + (1|grp", small(7)),
                        ["formula", "parenthes", "(", "parse"])


# ==================================================================================
# 6. Degenerate responses
# ==================================================================================
def _degenerate(formula, y_fn, expected, reml=True):
    def run():
        d = sleep()
        y = y_fn(d)

        def accept(m):
            sane(m)
            close(m.fixef, expected, rtol=0, atol=1e-8, what="fixef")
        return expect_error(lambda: lmer(formula, d.assign(Reaction=y), reml=reml),
                            ["reaction", "response"], accept=accept)
    return run


INT = "Reaction ~ Days + (1|Subject)"
for _f, _lab in ((INT, "(1|S)"), (SLOPE, "(Days|S)")):
    probe("6 degenerate", f"constant y=300 {_lab}")(
        _degenerate(_f, lambda d: np.full(len(d), 300.0), [300.0, 0.0]))
    probe("6 degenerate", f"y = 2*Days exactly {_lab}")(
        _degenerate(_f, lambda d: 2.0 * d.Days, [0.0, 2.0]))
probe("6 degenerate", "constant y=300 (Days|S), ML")(
    _degenerate(SLOPE, lambda d: np.full(len(d), 300.0), [300.0, 0.0], reml=False))
probe("6 degenerate", "y = 0 everywhere")(
    _degenerate(INT, lambda d: np.zeros(len(d)), [0.0, 0.0]))


@probe("6 degenerate", "y with two distinct values")
def _():
    d = sleep()
    d = d.assign(Reaction=(d.Reaction > d.Reaction.median()).astype(float))
    m = fit_ok(SLOPE, d)
    no_worse_than_restart(m, SLOPE, d)


@probe("6 degenerate", "y = Days + 1e-12 noise (near exact)")
def _():
    d = sleep()
    rng = np.random.default_rng(1)
    y = d.Days + 1e-12 * rng.normal(size=len(d))

    def accept(m):
        sane(m)
        close(m.fixef, [0.0, 1.0], rtol=0, atol=1e-9, what="fixef")
    return expect_error(lambda: lmer(INT, d.assign(Reaction=y)), ["reaction", "response"],
                        accept=accept)


@probe("6 degenerate", "y constant within each Subject (balanced)")
def _():
    d = sleep()
    y = d.groupby("Subject", observed=True).Reaction.transform("mean")

    def accept(m):
        sane(m)
        # Balanced: the GLS intercept is the grand mean at every theta.  lme4 1.1-31
        # stops at theta 3e4 with 298.5108 (rel. error 1e-5), hence rtol 1e-4.
        close(m.fixef.iloc[0], y.mean(), rtol=1e-4, what="intercept vs grand mean")
    return expect_error(lambda: lmer("Reaction ~ 1 + (1|Subject)", d.assign(Reaction=y)),
                        ["reaction", "response"], accept=accept)


def _lme_degenerate(y_fn, expected):
    def run():
        lme = api(mixedjax, "lme")
        d = sleep()

        def accept(m):
            sane(m, "lme")
            close(np.asarray(m.fixef, float), expected, rtol=0, atol=1e-8, what="lme fixef")
        return expect_error(lambda: lme("Reaction ~ Days", d.assign(Reaction=y_fn(d)),
                                        random="~ 1 | Subject"),
                            ["reaction", "response"], accept=accept)
    return run


probe("6 degenerate", "lme: constant response")(
    _lme_degenerate(lambda d: np.full(len(d), 300.0), [300.0, 0.0]))
probe("6 degenerate", "lme: y = 2*Days exactly")(
    _lme_degenerate(lambda d: 2.0 * d.Days, [0.0, 2.0]))
probe("6 degenerate", "lme: y = 0 everywhere")(
    _lme_degenerate(lambda d: np.zeros(len(d)), [0.0, 0.0]))


# ==================================================================================
# 7. Bad arguments
# ==================================================================================
def _int_base():
    return base_fit("sleep_int", INT, sleep)


def _arg_probe(names, accept=None, formula=INT, **kw):
    def run():
        d = sleep()
        acc = None if accept is None else (lambda m: accept(sane(m)))
        return expect_error(lambda: lmer(formula, d, **kw), names, accept=acc)
    return run


def _same_optimum(m):
    # lme4 1.1-31 from start=list(theta=0) or 1e10 or -1 reaches the default optimum.
    check(m.converged, f"not converged: {m.optinfo.get('message')}, objective "
          f"{m.objective:.6f}, theta {m.theta}")
    close(m.objective, _int_base().objective, rtol=0, atol=1e-6,
          what="objective vs the default fit")


probe("7 arguments", "theta0=[nan]")(_arg_probe(["theta0"], theta0=[np.nan]))
probe("7 arguments", "theta0=[inf]")(_arg_probe(["theta0"], theta0=[np.inf]))
probe("7 arguments", "theta0=[1e10]")(_arg_probe(["theta0"], _same_optimum, theta0=[1e10]))
probe("7 arguments", "theta0 of wrong length")(_arg_probe(["theta0"], theta0=[1.0, 2.0]))
probe("7 arguments", "theta0=[-1]")(_arg_probe(["theta0"], _same_optimum, theta0=[-1.0]))
probe("7 arguments", "theta0=[0] (a stationary point)")(
    _arg_probe(["theta0"], _same_optimum, theta0=[0.0]))
probe("7 arguments", "theta0='a'")(_arg_probe(["theta0"], theta0="a"))
probe("7 arguments", "max_iter=-1")(_arg_probe(["max_iter"], max_iter=-1))
probe("7 arguments", "max_iter=0")(_arg_probe(["max_iter"], max_iter=0))
probe("7 arguments", "max_iter=1.5")(_arg_probe(["max_iter"], max_iter=1.5))


def _max_iter_probe(k, optimizer):
    def run():
        model = mixedjax.LMM.from_formula(SLOPE, sleep())
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            m = model.fit(max_iter=k, optimizer=optimizer)
        sane(m)
        if m.converged:
            close(m.objective, SLEEP_SLOPE, rtol=0, atol=1e-5,
                  what="converged=True but objective")
            return f"converged in {m.optinfo['iterations']} iterations"
        check(any(issubclass(w.category, UserWarning) and "converge" in str(w.message)
                  for w in caught), "not converged but no convergence warning")
        return "not converged, warned"
    return run


for _k, _opt in ((1, "bfgs"), (2, "bfgs"), (1, "newton")):
    probe("7 arguments", f"max_iter={_k} optimizer={_opt} (Days|S)")(_max_iter_probe(_k, _opt))


@probe("7 arguments", "reml='yes' (error, or REML)")
def _():
    def accept(m):
        close(m.objective, _int_base().objective, rtol=0, atol=1e-6, what="objective vs REML")
    return _arg_probe(["reml"], accept, reml="yes")()


@probe("7 arguments", "reml='no' must not silently mean REML")
def _():
    def accept(m):
        # An ML fit would be right; REML (bool('no') is True) is silently wrong.
        check(not m.reml, "reml='no' fitted by REML")
    return _arg_probe(["reml"], accept, reml="no")()


@probe("7 arguments", "weights of wrong length")
def _():
    return _arg_probe(["weights"], weights=np.ones(10))()


@probe("7 arguments", "negative weights")
def _():
    w = np.ones(180)
    w[5] = -1.0
    return _arg_probe(["weights"], weights=w)()


@probe("7 arguments", "NaN weight (error, or row dropped)")
def _():
    w = np.ones(180)
    w[5] = np.nan
    ref = fit_ok(INT, sleep().drop(index=5))

    def accept(m):
        check(m.nobs == 179, f"nobs {m.nobs}, expected 179 (row dropped)")
        close(m.objective, ref.objective, rtol=1e-10, what="objective vs row removed")
    return _arg_probe(["weights"], accept, weights=w)()


@probe("7 arguments", "weights as a column name")
def _():
    d = sleep()
    w = 1.0 + (d.Days.to_numpy() % 3)
    ref = fit_ok(INT, d, weights=w)
    m = fit_ok(INT, d.assign(wt=w), weights="wt")
    close(m.objective, ref.objective, rtol=1e-12, what="objective")


@probe("7 arguments", "weights naming a missing column")
def _():
    return _arg_probe(["nope"], weights="nope")()


@probe("7 arguments", "optimizer='nope'")
def _():
    return _arg_probe(["optimizer", "nope"], optimizer="nope")()


@probe("7 arguments", "offset of wrong length")
def _():
    return _arg_probe(["offset"], offset=np.ones(7))()


@probe("7 arguments", "data=None")
def _():
    return expect_error(lambda: lmer(INT, None), ["data"])


@probe("7 arguments", "control with an unknown setting")
def _():
    return _arg_probe(["maxit"], control={"maxit": 5})()


# ==================================================================================
# 8. Nested and crossed designs: converged, and no worse than a restart
# ==================================================================================
NESTED_SLOPES = "y ~ x1 + (1|a) + (0+x1|a) + (0+x2|a) + (0+x3|a) + (1|a:b)"


def _design_probe(formula, data_fn, reml=True):
    def run():
        d = data_fn()
        m = fit_ok(formula, d, reml=reml)
        no_worse_than_restart(m, formula, d, reml=reml)
        return f"objective {m.objective:.6f}"
    return run


for _s in (1, 2, 3):
    probe("8 designs", f"nested uncorrelated slopes, seed {_s}")(
        _design_probe(NESTED_SLOPES, lambda s=_s: nested(s)))
probe("8 designs", "nested uncorrelated slopes, x + 1000")(
    _design_probe(NESTED_SLOPES, lambda: nested(4, shift=1000.0)))
probe("8 designs", "(x1 + x2 + x3 || a/b), x + 1000, ML")(
    _design_probe("y ~ x1 + (x1 + x2 + x3 || a/b)", lambda: nested(7, n=40, na=3, shift=1000.0),
                  reml=False))
for _s in (1, 2):
    probe("8 designs", f"three-level (1|a/b/c), seed {_s}")(
        _design_probe("y ~ x + (1|a/b/c)", lambda s=_s: three_level(s)))
probe("8 designs", "crossed (1|a) + (1|b)")(
    _design_probe("y ~ x + (1|a) + (1|b)", lambda: crossed(1)))
probe("8 designs", "crossed with slope (x|a) + (1|b)")(
    _design_probe("y ~ x + (x|a) + (1|b)", lambda: crossed(2)))


@probe("8 designs", "penicillin crossed, lme4 330.8606")
def _():
    d = mixedjax.datasets.load("penicillin")
    m = fit_ok("diameter ~ 1 + (1|plate) + (1|sample)", d)
    close(m.objective, PENICILLIN, rtol=0, atol=1e-5, what="objective vs lme4")


@probe("8 designs", "pastes nested (1|batch/cask)")
def _():
    d = mixedjax.datasets.load("pastes")
    m = fit_ok("strength ~ 1 + (1|batch/cask)", d)
    no_worse_than_restart(m, "strength ~ 1 + (1|batch/cask)", d)


# ==================================================================================
# 9. The criterion at the fitted theta
# ==================================================================================
def _objective_probe(formula, data_fn, reml=True, weights=None):
    def run():
        d = data_fn()
        w = None if weights is None else weights(d)
        m = fit_ok(formula, d, reml=reml, weights=w)
        model = mixedjax.LMM.from_formula(formula, d, reml=reml, weights=w)
        jx = float(api(model, "objective")(m.theta))
        close(jx, m.objective, rtol=1e-10, what="model.objective(theta)")
        ev = float(api(api(model, "eager"), "value")(m.theta))
        close(ev, m.objective, rtol=1e-10, what="model.eager.value(theta)")
    return run


probe("9 criterion", "sleepstudy (Days|Subject)")(_objective_probe(SLOPE, sleep))
probe("9 criterion", "sleepstudy (Days|Subject) ML")(_objective_probe(SLOPE, sleep, reml=False))
probe("9 criterion", "nested uncorrelated slopes")(_objective_probe(NESTED_SLOPES, lambda: nested(2)))
probe("9 criterion", "three-level nesting")(_objective_probe("y ~ x + (1|a/b/c)",
                                                             lambda: three_level(1)))
probe("9 criterion", "crossed with slope")(_objective_probe("y ~ x + (x|a) + (1|b)",
                                                            lambda: crossed(2)))
probe("9 criterion", "weighted D.csv (x|g)")(_objective_probe(
    "y ~ x + (x|g)", lambda: repro("D.csv"), weights=lambda d: 1.0 + d.x.to_numpy() ** 2))


@probe("9 criterion", "highR2.csv at a fixed theta vs 50-digit value")
def _():
    d = repro("highR2.csv")
    model = mixedjax.LMM.from_formula("y ~ x0 + (1 | g0)", d)
    theta = np.array([HIGHR2_THETA])
    close(float(api(api(model, "eager"), "value")(theta)), HIGHR2_VALUE, rtol=1e-11,
          what="eager.value")
    close(float(model.objective(theta)), HIGHR2_VALUE, rtol=1e-11, what="model.objective")
    m = fit_ok("y ~ x0 + (1 | g0)", d)
    check(m.objective <= HIGHR2_VALUE + 1e-9 * abs(HIGHR2_VALUE),
          f"fitted objective {m.objective} above the value at a fixed theta")


# ==================================================================================
# 10. Batched refits
# ==================================================================================
def _responses(d, seed, nsim, make_y):
    rng = np.random.default_rng(seed)
    return np.stack([make_y(d, rng) for _ in range(nsim)])


def _nested_y(d, rng):
    a = d.a.str[1:].astype(int).to_numpy()
    b = d.b.str[1:].astype(int).to_numpy()
    ua, uab = rng.normal(size=a.max() + 1), rng.normal(scale=0.6, size=(a.max() + 1, 3))
    sl = rng.normal(scale=0.4, size=(3, a.max() + 1))
    X = d[["x1", "x2", "x3"]].to_numpy().T
    return (1.0 + 0.5 * X[0] + ua[a] + uab[a, b] + sum(sl[j][a] * X[j] for j in range(3))
            + rng.normal(size=len(d)))


def _refit_probe(formula, data_fn, make_y, nsim=20, reml=True, theta0=None):
    def run():
        d = data_fn()
        m = fit_ok(formula, d, reml=reml)
        Y = _responses(d, 99, nsim, make_y)
        refit = api(m, "refit_many")
        batch = refit(Y) if theta0 is None else refit(Y, theta0=np.asarray(theta0))
        obj = np.asarray(batch.objective, float)
        check(np.all(np.isfinite(obj)), f"non-finite replicate objectives: {obj}")
        single = np.array([sane(lmer(formula, d.assign(y=y), reml=reml)).objective for y in Y])
        worse = obj - single > 1e-6 + 1e-10 * np.abs(single)
        check(not worse.any(), f"{worse.sum()} of {nsim} replicates above the single fit, e.g. "
              f"#{np.argmax(obj - single)}: {obj[np.argmax(obj - single)]:.6f} vs "
              f"{single[np.argmax(obj - single)]:.6f}")
        nc = int((~np.asarray(batch.converged, bool)).sum())
        return f"max excess {np.max(obj - single):.1e}" + (f", {nc} not converged" if nc else "")
    return run


probe("10 refits", "refit_many (1|a/b), 20 responses")(
    _refit_probe("y ~ x1 + (1|a/b)", lambda: nested(21), _nested_y))
probe("10 refits", "refit_many nested uncorrelated slopes, 20 responses")(
    _refit_probe(NESTED_SLOPES, lambda: nested(22), _nested_y))


def _slope_y(d, rng):
    g = pd.factorize(d.g)[0]
    ng = g.max() + 1
    return (1.0 + 0.5 * d.x.to_numpy() + rng.normal(size=ng)[g]
            + rng.normal(scale=0.3, size=ng)[g] * d.x.to_numpy() + rng.normal(size=len(d)))


probe("10 refits", "refit_many (x|g) five groups ML, 20 responses")(
    _refit_probe("y ~ x + (x | g)", lambda: repro("slope_local_min_a.csv"), _slope_y,
                 reml=False))
probe("10 refits", "refit_many (x|g) from theta0=[1,-1,5] (local minimum)")(
    _refit_probe("y ~ x + (x | g)", lambda: repro("slope_local_min_a.csv"), _slope_y,
                 reml=False, theta0=[1.0, -1.0, 5.0]))


@probe("10 refits", "bootstrap sleepstudy 10 replicates vs single fits")
def _():
    m = _sleep_base()
    bs = api(m, "bootstrap")(nsim=10, key=3)
    Y = api(m, "simulate")(nsim=10, key=3)
    obj = np.asarray(bs.batch.objective, float)
    check(np.all(np.isfinite(obj)), f"non-finite replicate objectives {obj}")
    d = sleep()
    single = np.array([sane(lmer(SLOPE, d.assign(Reaction=y))).objective for y in Y])
    excess = obj - single
    check(np.all(excess <= 1e-6 + 1e-10 * np.abs(single)),
          f"replicate above single fit by {excess.max():.2e}")


# ==================================================================================
# 11. The command line
# ==================================================================================
def _cli(args, expect_rc, stdout_has=None, stderr_has=None):
    def run():
        env = dict(os.environ)
        r = subprocess.run([sys.executable, "-m", "mixedjax", *args], capture_output=True,
                           text=True, timeout=300, env=env, cwd=tempfile.gettempdir())
        if "Traceback" in r.stderr:
            raise Fail("traceback: " + r.stderr.strip().splitlines()[-1])
        check(r.returncode == expect_rc, f"exit status {r.returncode}, expected {expect_rc}: "
              f"{r.stderr.strip()[:100]}")
        if stdout_has:
            check(stdout_has in r.stdout, f"{stdout_has!r} not in the output")
        if stderr_has:
            check(stderr_has.lower() in r.stderr.lower(),
                  f"{stderr_has!r} not in stderr: {r.stderr.strip()[:100]}")
    return run


_TMP = Path(tempfile.mkdtemp(prefix="mixedjax_probes_"))


def _csv(name, df):
    path = _TMP / name
    df.to_csv(path, index=False)
    return str(path)


probe("11 cli", "fit a CSV file")(lambda: _cli(
    ["fit", _csv("d.csv", repro("D.csv")), "y ~ x + (1 | g)"], 0, stdout_has="0.685")())
probe("11 cli", "missing file: exit 2, one line")(lambda: _cli(
    ["fit", str(_TMP / "nope.csv"), "y ~ x + (1 | g)"], 2, stderr_has="nope.csv")())
probe("11 cli", "formula naming a missing column")(lambda: _cli(
    ["fit", _csv("d2.csv", repro("D.csv")), "y ~ zz + (1 | g)"], 2, stderr_has="zz")())
probe("11 cli", "zero response: exit 2, no traceback")(lambda: _cli(
    ["fit", _csv("zero.csv", sleep().assign(Reaction=0.0)), "Reaction ~ Days + (1 | Subject)"],
    2)())
probe("11 cli", "response of 1e200: exit 2, no traceback")(lambda: _cli(
    ["fit", _csv("huge.csv", sleep().assign(Reaction=lambda d: d.Reaction * 1e200)),
     "Reaction ~ Days + (1 | Subject)"], 2)())


# ----------------------------------------------------------------------------------
def run_one(category, name, fn):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        try:
            note = fn()
            status, reason = "PASS", note or "ok"
        except Fail as e:
            status, reason = "FAIL", str(e)
        except MissingAPI as e:
            status, reason = "FAIL", f"missing API: {e}"
        except Exception as e:     # a raw exception: FAIL whatever it is
            kind = type(e).__module__.split(".")[0] + "." + type(e).__qualname__
            where = traceback.extract_tb(e.__traceback__)[-1]
            reason = (f"raw {kind}: {first_line(e)} "
                      f"[{Path(where.filename).name}:{where.lineno}]")
            status = "FAIL"
        seconds = time.perf_counter() - t0
    nw = len(caught)
    if nw:
        reason += f" [{nw} warning{'s' * (nw > 1)}]"
    return status, reason, seconds


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    selected = [p for p in PROBES
                if not argv or any(a.lower() in (p[0] + " " + p[1]).lower() for a in argv)]
    print(f"mixedjax {getattr(mixedjax, '__version__', '?')} from {mixedjax.__file__}")
    print(f"{len(selected)} probes\n")
    counts: dict[str, list[int]] = {}
    t_start = time.perf_counter()
    for category, name, fn in selected:
        status, reason, seconds = run_one(category, name, fn)
        c = counts.setdefault(category, [0, 0])
        c[0] += status == "PASS"
        c[1] += 1
        print(f"{category:<13} {name:<52} {status}  {reason}  ({seconds:.1f}s)", flush=True)
    total = time.perf_counter() - t_start
    print(f"\n{'category':<14}{'passed':>8}{'probes':>8}")
    for category, (ok, n) in counts.items():
        print(f"{category:<14}{ok:>8}{n:>8}")
    passed = sum(c[0] for c in counts.values())
    n = sum(c[1] for c in counts.values())
    print(f"\n{passed} of {n} probes passed ({total:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
