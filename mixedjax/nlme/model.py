"""From a DataFrame and nlme-style arguments to the padded per-block arrays.

:func:`build_model` checks the arguments, drops incomplete rows, builds the
fixed-effects matrix (patsy, R's column names and order), the random-effects
levels and terms, binds the variance function and correlation structure to the
data, and packs everything into :class:`~mixedjax.nlme.likelihood.Arrays`.
Rows are arranged as nlme arranges them: sorted by the grouping factors,
outermost first, in a stable sort (the order decides VarIdent's reference
stratum and the positions of ``~ 1 | g`` correlation structures).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import jax.numpy as jnp
import numpy as np
import pandas as pd

from ..design import (EVAL_ENV, check_columns, independent_columns, r_model_matrix,
                      response_vector, term_model_matrix)
from ..persist import EncodingSpec, describe_info, rebuild_info
from ..frames import as_pandas
from ..formula import FormulaError, formula_variables, parse_formula
from .corstruct import NO_CORRELATION, BoundCor, CorStruct
from .grouping import Packing, ReLevel, group_codes, make_packing, parse_random
from .likelihood import Arrays, Layout
from .varfunc import NO_VARIANCE, BoundVar, VarFixed, VarFunc

__all__ = ["NlmeModel", "Term", "build_model", "free_indices"]


@dataclass
class Term:
    """One random-effects covariance block: its level, model matrix and names."""

    level: int
    expr: str
    cnames: list[str]
    Z: np.ndarray
    design_info: object = field(repr=False)

    @property
    def k(self) -> int:
        return self.Z.shape[1]

    # patsy refuses to pickle its design infos: they travel as plain descriptions
    # (mixedjax.persist) and are rebuilt on loading.
    def __getstate__(self):
        return _described(self.__dict__, "design_info")

    def __setstate__(self, state):
        self.__dict__.update(_rebuilt(state, "design_info"))


@dataclass
class NlmeModel:
    """Everything a fit needs; rows of X, y, codes are in the original data order."""

    kind: str
    formula: str
    response: str
    method: str
    data: pd.DataFrame = field(repr=False)
    y: np.ndarray = field(repr=False)
    X: np.ndarray = field(repr=False)
    xnames: list[str]
    x_design_info: object = field(repr=False)
    x_perm: np.ndarray = field(repr=False)
    x_keep: np.ndarray = field(repr=False)
    levels: tuple[ReLevel, ...]
    level_codes: list[np.ndarray] = field(repr=False)
    level_labels: list[list[str]] = field(repr=False)
    level_keys: list[list[tuple]] = field(repr=False)
    terms: list[Term]
    packing: Packing = field(repr=False)
    weights: VarFunc | None
    correlation: CorStruct | None
    bvar: BoundVar
    bcor: BoundCor
    layout: Layout
    arrays: Arrays = field(repr=False)
    n_dropped: int = 0
    data_name: str | None = None

    @property
    def reml(self) -> bool:
        return self.method == "REML"

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def with_covariate(self, values: np.ndarray) -> Arrays:
        """Arrays with the variance covariate replaced (VarPower on fitted values)."""
        return self.arrays._replace(vcov=jnp.asarray(self.packing.pad(values, 1.0)))

    # The model pickles (to a file, to a worker process) with the encoding of X as a
    # plain description, as each Term does with its own.
    def __getstate__(self):
        return _described(self.__dict__, "x_design_info")

    def __setstate__(self, state):
        self.__dict__.update(_rebuilt(state, "x_design_info"))


def _described(state: dict, name: str) -> dict:
    """``state`` with the patsy design info under ``name`` as an EncodingSpec."""
    out = dict(state)
    if out.get(name) is not None and not isinstance(out[name], EncodingSpec):
        out[name] = describe_info(out[name])
    return out


def _rebuilt(state: dict, name: str) -> dict:
    """The inverse of :func:`_described`."""
    out = dict(state)
    if isinstance(out.get(name), EncodingSpec):
        out[name] = rebuild_info(out[name], EVAL_ENV)
    return out


def _check_method(method) -> str:
    if not isinstance(method, str) or method.upper() not in ("REML", "ML"):
        raise ValueError(f"method must be 'REML' or 'ML', got {method!r}")
    return method.upper()


def _check_structures(weights, correlation):
    if isinstance(weights, str):
        weights = VarFixed(weights)  # nlme: a formula as weights means varFixed
    if weights is not None and not isinstance(weights, VarFunc):
        raise TypeError("weights must be a variance function such as "
                        f"mixedjax.VarIdent('~ 1 | g'), got {type(weights).__name__}")
    if correlation is not None and not isinstance(correlation, CorStruct):
        raise TypeError("correlation must be a correlation structure such as "
                        f"mixedjax.CorAR1('~ 1 | g'), got {type(correlation).__name__}")
    return weights, correlation


def _parse_fixed(formula, what: str):
    if not isinstance(formula, str):
        raise TypeError(f"{what} must be a formula string such as 'y ~ x', got "
                        f"{type(formula).__name__}")
    try:
        parsed = parse_formula(formula)
    except FormulaError as err:
        raise ValueError(str(err)) from None
    if parsed.random:
        raise ValueError(f"{what} {formula!r} contains a random-effects term; give random "
                         "effects in 'random' (lme) or use mixedjax.lmer")
    return parsed


def _complete_rows(data: pd.DataFrame, columns: list[str]):
    missing = [c for c in columns if c not in data.columns]
    if missing:
        raise ValueError(f"column(s) {missing} not found in data; available columns: "
                         f"{list(data.columns)}")
    check_columns(data, columns)
    sub = data[columns]
    complete = ~sub.isna().any(axis=1).to_numpy()
    if not complete.any():
        raise ValueError(f"no rows left after dropping rows with missing values in {columns}")
    sub = data.loc[complete].copy()
    for c in columns:
        if isinstance(sub[c].dtype, pd.CategoricalDtype):
            sub[c] = sub[c].cat.remove_unused_categories()
    return sub, int((~complete).sum())


def _fixed_matrix(parsed, data):
    y = response_vector(data, parsed.response)
    X_full, info, perm, names = r_model_matrix(parsed.fixed, data, "fixed-effects")
    keep = independent_columns(X_full) if X_full.shape[1] else np.zeros(0, bool)
    aliased = [nm for nm, k in zip(names, keep) if not k]
    if aliased:
        warnings.warn(f"fixed-effect model matrix is rank deficient: dropping {aliased}",
                      stacklevel=4)
    return y, X_full[:, keep], [nm for nm, k in zip(names, keep) if k], info, perm, keep


def _cor_level(correlation, levels, kind: str) -> int | None:
    """Index of the random level whose groups carry the correlation (lme), checked
    against the correlation's own grouping as nlme checks it."""
    if correlation is None or kind == "gls":
        return None
    clev = correlation.levels
    if not clev:
        return len(levels) - 1
    ccum = [set(c) for c in _cumulative(clev)]
    rcum = [set(lev.columns) for lev in levels]
    if len(ccum) > len(rcum) or any(c != r for c, r in zip(ccum, rcum)):
        raise ValueError(f"correlation grouping {correlation.form!r} does not match the "
                         f"random-effects grouping {[lev.display for lev in levels]}: it "
                         "must name the same grouping factors (outermost first)")
    if len(ccum) < len(rcum):
        warnings.warn("the correlation structure cannot be grouped more coarsely than the "
                      "random effects; using the innermost random-effects grouping "
                      "(as nlme does)", stacklevel=4)
    return len(levels) - 1


def _cumulative(levels):
    out, acc = [], ()
    for lev in levels:
        acc = acc + lev
        out.append(acc)
    return out


def _used_columns(parsed, levels, weights, correlation, columns) -> list[str]:
    cols = (formula_variables(parsed.response, columns)
            + formula_variables(parsed.fixed, columns))
    for lev in levels:
        cols += list(lev.columns)
        for e in lev.exprs:
            cols += formula_variables(e, columns)
    for s in (weights, correlation):
        if s is not None:
            cols += s.columns()
    return list(dict.fromkeys(cols))


def build_model(kind: str, formula, data, random=None, weights=None, correlation=None,
                method="REML") -> NlmeModel:
    """Check the arguments and build the :class:`NlmeModel` (``kind``: lme or gls)."""
    data = as_pandas(data, "data")
    method = _check_method(method)
    weights, correlation = _check_structures(weights, correlation)
    parsed = _parse_fixed(formula, "fixed" if kind == "lme" else "model")
    levels = parse_random(random) if kind == "lme" else ()
    cor_level = _cor_level(correlation, levels, kind)
    if kind == "gls" and correlation is not None and not correlation.levels:
        raise NotImplementedError(
            f"gls with {correlation!r} and no grouping factor would treat all rows as one "
            "series (an n x n covariance); give the groups, e.g. '~ 1 | g'")
    data_sub, n_dropped = _complete_rows(data, _used_columns(parsed, levels, weights,
                                                             correlation, data.columns))
    y, X, xnames, info, perm, keep = _fixed_matrix(parsed, data_sub)
    n = len(y)

    codes, labels, keys = [], [], []
    for lev in levels:
        c, lab, key = group_codes(data_sub, lev.columns)
        codes.append(c)
        labels.append(lab)
        keys.append(key)
    terms = _make_terms(levels, data_sub, n)

    packing, csub = _blocks(kind, data_sub, levels, codes, correlation, cor_level)
    # nlme sorts the rows by all grouping levels (stable): the first stratum met in
    # that order is VarIdent's reference.
    order = packing.order if kind == "gls" else np.argsort(codes[-1], kind="stable")
    bvar, vcov, vstrat, bcor, ctime = _bind(weights, correlation, data_sub, csub, order)

    layout = Layout(n=n, p=X.shape[1], reml=method == "REML",
                    k=tuple(t.k for t in terms), var=bvar.spec, cor=bcor.spec)
    _check_size(layout, n, kind)
    arrays = _pack(packing, X, y, terms, codes, vcov, bvar.param_index(vstrat), ctime, csub)
    arrays = arrays._replace(vcode=jnp.asarray(bvar.code),
                             cinf=jnp.asarray(bcor.inf, dtype=jnp.float64))
    return NlmeModel(
        kind=kind, formula=formula, response=parsed.response, method=method, data=data_sub,
        y=y, X=X, xnames=xnames, x_design_info=info, x_perm=perm, x_keep=keep,
        levels=levels, level_codes=codes, level_labels=labels, level_keys=keys,
        terms=terms, packing=packing, weights=weights, correlation=correlation,
        bvar=bvar, bcor=bcor, layout=layout, arrays=arrays, n_dropped=n_dropped,
        data_name=data.attrs.get("name"))


def _blocks(kind, data, levels, codes, correlation, cor_level):
    """The blocks (lme: outermost groups; gls: correlation groups or single rows)
    and the correlation-group code of every row."""
    n = len(data)
    if kind == "lme":
        _check_blocks(codes[0], levels[0].name)
        return make_packing(codes[0], n), codes[cor_level if cor_level is not None else -1]
    if correlation is not None:
        csub, _, _ = group_codes(data, _cumulative(correlation.levels)[-1])
        _check_blocks(csub, "/".join(":".join(c) for c in correlation.levels))
        return make_packing(csub, n), csub
    return make_packing(None, n), np.zeros(n, np.int64)


def _bind(weights, correlation, data, csub, order):
    n = len(data)
    if weights is not None:
        bvar, vcov, vstrat = weights.bind(data, order)
    else:
        bvar, vcov, vstrat = NO_VARIANCE, np.ones(n), np.zeros(n, np.int64)
    if correlation is not None:
        bcor, ctime = correlation.bind(data, csub, order)
    else:
        bcor, ctime = NO_CORRELATION, np.zeros(n)
    return bvar, vcov, vstrat, bcor, ctime


def _check_blocks(codes: np.ndarray, name: str) -> None:
    """Blocks are the groups: one group would make the covariance a dense n x n."""
    if codes.max() < 1:
        raise ValueError(f"grouping factor {name!r} has a single level; the groups of the "
                         "random effects (lme) or correlation structure (gls) need at "
                         "least 2 levels")


def _make_terms(levels, data, n) -> list[Term]:
    terms = []
    for i, lev in enumerate(levels):
        for expr in lev.exprs:
            Z, info, cnames = term_model_matrix(expr, data,
                                                f"random-effects term ({expr} | {lev.name})")
            if Z.shape[1] == 0:
                raise ValueError(f"random-effects term ({expr} | {lev.name}) has no columns")
            terms.append(Term(level=i, expr=expr, Z=Z, design_info=info, cnames=cnames))
    return terms


def _check_size(layout: Layout, n: int, kind: str) -> None:
    if n <= layout.p:
        raise ValueError(f"{n} observations are too few for {layout.p} fixed effects")
    npar = layout.p + layout.nparams + 1
    if npar > n:
        raise ValueError(f"the {kind} model has {npar} parameters but only {n} observations")


def _pack(packing: Packing, X, y, terms, codes, vcov, vidx, ctime, csub) -> Arrays:
    def pad(v, fill):
        return jnp.asarray(packing.pad(v, fill))
    beta0 = np.linalg.lstsq(X, y, rcond=None)[0] if X.shape[1] else np.zeros(0)
    return Arrays(
        X=pad(X, 0.0), y=pad(y - X @ beta0, 0.0), mask=pad(np.ones(len(y), bool), False),
        Z=tuple(pad(t.Z, 0.0) for t in terms),
        zsub=tuple(pad(codes[t.level], -1) for t in terms),
        vcov=pad(np.asarray(vcov, np.float64), 1.0), vidx=pad(vidx, 0), vcode=None,
        ctime=pad(np.asarray(ctime, np.float64), 0.0), csub=pad(csub, -1), cinf=None,
        beta0=jnp.asarray(beta0, dtype=jnp.float64))


def free_indices(model: NlmeModel) -> tuple[int, ...]:
    """Positions of the optimized parameters (fixed structures are held)."""
    nt, nv, nc = model.layout.sizes
    free = list(range(nt))
    if not model.bvar.fixed:
        free += range(nt, nt + nv)
    if not model.bcor.fixed:
        free += range(nt + nv, nt + nv + nc)
    return tuple(free)
