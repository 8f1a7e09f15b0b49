"""The fixed-effects terms of a fit and their codings, rebuilt from patsy's design info.

R's ``terms(model)`` / ``attr(X, "assign")`` in Python: which columns of X belong to
which term (``V``, ``N``, ``V:N``), which variables are factors, and per-term model
matrices evaluated on the model frame with other codings (full dummy coding, R's
``contr.treatment``), as lmerTest needs them for its type I-III hypotheses
(Kuznetsova, Brockhoff & Christensen 2017, JSS 82(13), section 4.2).

Column bookkeeping: patsy builds the full X in its own column order; the design
permutes it to R's order (``x_perm``) and drops aliased columns (``x_keep``).  Here
``full`` positions index the permuted full X and ``columns`` index the kept X (the
order of ``result.fixef``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import patsy
from patsy.categorical import categorical_to_int

__all__ = ["FixedTerm", "fixed_terms", "factor_label", "factor_values", "has_intercept",
           "full_dummy_matrix", "coded_matrix", "model_frame", "containment",
           "is_treatment_coded"]


@dataclass(frozen=True)
class FixedTerm:
    """One fixed-effects term: R's label, patsy's term, its columns.

    ``columns``: indices into the kept X (fixef order); ``full``: positions in the
    permuted full X (aliased columns included); ``variables``: labels of its
    variables in R's order (first appearance in the formula); ``numeric``: those
    that are numeric; ``coded``: those R's ``terms()`` marks 1 in its factors
    matrix (coded by contrasts) rather than 2 (by dummies of all levels), which
    lmerTest uses to decide which terms contain which.
    """

    label: str
    term: object
    columns: tuple[int, ...]
    full: tuple[int, ...]
    variables: tuple[str, ...]
    numeric: frozenset
    coded: frozenset = frozenset()

    @property
    def order(self) -> int:
        return len(self.variables)


def factor_label(factor) -> str:
    """R's name of a patsy factor: ``Q("a.b")`` -> ``a.b``, ``x ** 2`` -> ``x^2``."""
    name = factor.name()
    name = re.sub(r"Q\([\"'](.*?)[\"']\)", r"\1", name)
    return name.replace(" ** ", "^").replace("**", "^")


def model_frame(design):
    """The model frame saved on the design (used columns, complete rows)."""
    frame = getattr(design, "frame", None)
    if frame is None:
        raise ValueError("this fit does not keep its model frame, which anova types 1-3 "
                         "and emmeans need; refit it with mixedjax.lmer")
    return frame


def has_intercept(design) -> bool:
    return any(len(t.factors) == 0 for t in design.x_design_info.terms)


def fixed_terms(design) -> list[FixedTerm]:
    """The model's fixed-effects terms (intercept excluded) in R's order.

    R orders terms by degree, then as written; the design's column permutation
    already follows that order, so terms are sorted by their first column.
    """
    info = design.x_design_info
    perm = np.asarray(design.x_perm)
    keep = np.asarray(design.x_keep, dtype=bool)
    kept_index = np.cumsum(keep) - 1
    position = np.empty(len(perm), dtype=np.int64)
    position[perm] = np.arange(len(perm))          # patsy column -> permuted position
    rank = _appearance_order(design)
    model_sets = {frozenset(factor_label(f) for f in t.factors) for t in info.terms}
    out = []
    for term in info.terms:
        if len(term.factors) == 0:
            continue
        sl = info.term_slices[term]
        full = tuple(sorted(int(position[j]) for j in range(sl.start, sl.stop)))
        cols = tuple(int(kept_index[f]) for f in full if keep[f])
        variables = tuple(sorted((factor_label(f) for f in term.factors),
                                 key=lambda v: rank.get(v, len(rank))))
        numeric = frozenset(factor_label(f) for f in term.factors
                            if info.factor_infos[f].type == "numerical")
        # R's terms(): a variable of an interaction is coded by contrasts (1) when the
        # term without it is in the model, else by dummies (2); main effects are 1.
        coded = frozenset(v for v in variables
                          if len(variables) == 1 or frozenset(variables) - {v} in model_sets)
        out.append(FixedTerm(label=":".join(variables), term=term, columns=cols, full=full,
                             variables=variables, numeric=numeric, coded=coded))
    out.sort(key=lambda t: t.full[0] if t.full else np.inf)
    return out


def _appearance_order(design) -> dict[str, int]:
    """Variables by first appearance in the formula (R orders a term's variables so)."""
    from ..formula import quote_columns

    rank: dict[str, int] = {}
    frame = getattr(design, "frame", None)
    fixed = design.formula.fixed
    try:
        if frame is not None:
            fixed = quote_columns(fixed, frame.columns)
        written = patsy.ModelDesc.from_formula(fixed).rhs_termlist
    except patsy.PatsyError:
        written = design.x_design_info.terms
    for t in written:
        for f in t.factors:
            rank.setdefault(factor_label(f), len(rank))
    return rank


def containment(terms: list[FixedTerm]) -> dict[str, list[str]]:
    """For each term, the terms that contain it (lmerTest's ``containment``).

    Over the variables R codes by contrasts (:attr:`FixedTerm.coded`): F2 contains
    F1 when F1's are a subset of F2's, F2 has more, and both have the same numeric
    ones (so ``x`` is contained in ``f:x`` but ``f`` is not).
    """
    out = {}
    for t1 in terms:
        v1, n1 = t1.coded, t1.coded & t1.numeric
        out[t1.label] = [t2.label for t2 in terms
                         if v1 <= t2.coded and t2.coded - v1 and n1 == t2.coded & t2.numeric]
    return out


def factor_values(info, factor, frame):
    """A factor evaluated on ``frame``: level codes (categorical) or an (n, c) array."""
    fi = info.factor_infos[factor]
    value = factor.eval(fi.state, frame)
    if fi.type == "categorical":
        codes = categorical_to_int(value, fi.categories, patsy.NAAction(), origin=factor)
        return np.asarray(codes, dtype=np.int64)
    arr = np.asarray(value, dtype=np.float64)
    return arr.reshape(len(frame), -1)


def _product_columns(parts):
    """Row-wise products of per-factor column blocks, leftmost factor fastest (R, patsy).

    ``parts``: list of (n, c_f) arrays and their per-column keys; returns the
    (n, prod c_f) matrix and the key tuples of its columns.
    """
    mats = [m for m, _ in parts]
    keys = [k for _, k in parts]
    n = mats[0].shape[0] if mats else 0
    out_cols, out_keys = [], []
    for combo in np.ndindex(*[m.shape[1] for m in reversed(mats)]):
        combo = combo[::-1]
        col = np.ones(n)
        for m, j in zip(mats, combo):
            col = col * m[:, j]
        out_cols.append(col)
        out_keys.append(tuple(k[j] for k, j in zip(keys, combo)))
    mat = np.column_stack(out_cols) if out_cols else np.zeros((n, 0))
    return mat, out_keys


def _factor_block(info, factor, frame, contrast=None):
    """(n, c) coding of one factor and keys identifying each column.

    Categorical: indicator columns of every level (``contrast=None``) or the
    indicators times a contrast matrix; keys are level indices for indicator and
    treatment columns.  Numeric: its value columns, keyed ``("num", j)``.
    """
    fi = info.factor_infos[factor]
    vals = factor_values(info, factor, frame)
    if fi.type != "categorical":
        return vals, [("num", j) for j in range(vals.shape[1])]
    ind = np.zeros((len(vals), len(fi.categories)))
    ind[np.arange(len(vals)), vals] = 1.0
    if contrast is None:
        return ind, list(range(len(fi.categories)))
    return ind @ contrast, None


def full_dummy_matrix(design, term: FixedTerm, frame):
    """``model.matrix(~ 0 + term)`` as lmerTest's ``get_rdX`` builds it: every
    categorical factor coded by indicators of all its levels."""
    info = design.x_design_info
    parts = [_factor_block(info, f, frame) for f in term.term.factors]
    return _product_columns(parts)


def _treatment(levels: int, full: bool) -> np.ndarray:
    """R's ``contr.treatment`` (first level the reference), or all indicators."""
    eye = np.eye(levels)
    return eye if full else eye[:, 1:]


def coded_matrix(design, frame, treatment: bool):
    """The full (permuted, unaliased-dropped) X rebuilt from patsy's subterm codings.

    ``treatment=True`` replaces every reduced-rank contrast by R's
    ``contr.treatment`` and every full-rank coding by indicators (lmerTest's
    ``get_model_matrix(type = "remake", contrasts = "contr.treatment")``).  Returns
    the matrix in the permuted order and one key per column,
    ``(patsy term, level-or-column per factor)``, that identifies a treatment
    column with the matching column of :func:`full_dummy_matrix`.
    """
    info = design.x_design_info
    n = len(frame)
    cols, keys = [], []
    for term in info.terms:
        for sub in info.term_codings[term]:
            parts = []
            for f in sub.factors:
                fi = info.factor_infos[f]
                if fi.type == "categorical":
                    cm = np.asarray(sub.contrast_matrices[f].matrix)
                    nlev = len(fi.categories)
                    full = cm.shape[1] == nlev
                    mat = _treatment(nlev, full) if treatment else cm
                    block, _ = _factor_block(info, f, frame, contrast=mat)
                    lev_keys = list(range(nlev)) if full else list(range(1, nlev))
                    parts.append((block, lev_keys))
                else:
                    parts.append(_factor_block(info, f, frame))
            if not parts:
                cols.append(np.ones((n, 1)))
                keys.append(("(Intercept)", ()))
                continue
            mat, ks = _product_columns(parts)
            cols.append(mat)
            keys.extend((term, k) for k in ks)
    X = np.column_stack(cols) if cols else np.zeros((n, 0))
    perm = np.asarray(design.x_perm)
    return X[:, perm], [keys[j] for j in perm]


def is_treatment_coded(design) -> bool:
    """True when every categorical factor uses R's default ``contr.treatment`` (or
    indicators where a full-rank coding is needed), i.e. X equals its remake."""
    info = design.x_design_info
    for term in info.terms:
        for sub in info.term_codings[term]:
            for f, cm in sub.contrast_matrices.items():
                mat = np.asarray(cm.matrix)
                nlev = len(info.factor_infos[f].categories)
                ref = _treatment(nlev, mat.shape[1] == nlev)
                if mat.shape != ref.shape or not np.array_equal(mat, ref):
                    return False
    return True
