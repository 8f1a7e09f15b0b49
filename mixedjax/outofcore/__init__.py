"""Linear mixed models fitted from a Dask DataFrame: data larger than memory.

``mixedjax.outofcore.lmer(formula, ddf)`` (which ``mixedjax.lmer`` calls for a Dask
DataFrame) reads the partitions three times and never gathers the rows
(:mod:`mixedjax.outofcore.partition` has the per-partition functions and the order
of the passes):

1. levels of the factors and missing-value counts;
2. the R factor of the weighted [X y], by a tall-skinny QR: the stable basis of
   :mod:`mixedjax.crossprod`, and the aliased fixed-effect columns;
3. the cross-products [Z Q r]'[Z Q r] by term pair, the sparse Z_s'Z_t entries
   summed by key range so that no worker holds them all.

Each pass is a tree of merges on the workers; the client then lays the sums out
as the engine's blocks (:mod:`mixedjax.outofcore.assemble`) and fits exactly as
``mixedjax.lmer`` does on the same rows in memory.  Fitted values and residuals
are another pass, on request (lazy Dask Series).

Dask is imported only here, when a partitioned fit runs: ``import mixedjax`` never
needs it (``pip install 'mixedjax[dask]'``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .._warn import warn_user
from ..design import Design, ReTerm
from ..model import LMM
from ..result import LMMResult
from .assemble import assemble, basis_from_r, moment_theta, orthonormal_sums
from .partition import (Encoding, encoding, merge_levels, merge_r, merge_sums, model_spec,
                        partition_fitted, partition_levels, partition_r, partition_sums,
                        split_sums)

__all__ = ["lmer", "is_dask_frame", "partitioned_model", "PartitionedLMM",
           "PartitionedResult", "PartitionedDesign", "partition_levels", "merge_levels",
           "partition_r", "merge_r", "partition_sums", "merge_sums", "partition_fitted"]


def is_dask_frame(data) -> bool:
    """True for a Dask DataFrame (checked without importing Dask)."""
    return (type(data).__module__.split(".")[0] in ("dask", "dask_expr")
            and hasattr(data, "to_delayed") and hasattr(data, "columns"))


@dataclass
class PartitionedDesign(Design):
    """A :class:`~mixedjax.design.Design` without its rows: ``X`` has no rows (its
    columns name the fixed effects), the terms carry levels and encodings but no
    codes; ``y`` holds (max |y_w|, the norm of the rest of y_w), the weighted
    response less its offset summarized by the largest |value| and the sum of
    squares that :meth:`LMM.check_response <mixedjax.model.LMM.check_response>`
    reads; ``weights`` the mean prior weight (what the fit's theta scale reads).
    ``nobs`` the number of complete rows."""

    nobs: int = 0

    @property
    def n(self) -> int:
        return self.nobs


class PartitionedLMM(LMM):
    """An :class:`~mixedjax.model.LMM` built from the partitions' sums
    (:meth:`LMM.from_blocks <mixedjax.model.LMM.from_blocks>`): the fit, the
    criterion and everything that reads the blocks work as in memory.  ``moments``
    the starting theta computed from the sums (None: lme4's start), ``data`` the
    partitions (for fitted values), ``encoding`` how a partition's rows are built."""

    @classmethod
    def from_sums(cls, design: PartitionedDesign, blocks, placement, reml: bool, moments,
                  data, encoding: Encoding) -> "PartitionedLMM":
        """The model of :func:`partitioned_model` from its assembled blocks."""
        model = cls.from_blocks(design, blocks, placement, reml=reml)
        model.moments = None if moments is None else np.asarray(moments, np.float64)
        model.data = data if is_dask_frame(data) else list(data)
        model.encoding = encoding
        return model

    def start_theta(self) -> np.ndarray:
        """The moment estimate from the sums (:func:`mixedjax.outofcore.assemble.moment_theta`)
        when every term is scalar, else :meth:`initial_theta`."""
        if self.moments is None:
            return super().start_theta()
        return self.moments.copy()

    def fit(self, *args, **kwargs) -> "PartitionedResult":
        result = super().fit(*args, **kwargs)
        out = PartitionedResult.__new__(PartitionedResult)
        out.__dict__.update(result.__dict__)
        return out

    def __getstate__(self):
        state = super().__getstate__()
        state["data"] = None       # the Dask graph stays with the session that made it
        return state

    def __repr__(self) -> str:
        return "Partitioned" + super().__repr__()


class PartitionedResult(LMMResult):
    """A fit from a Dask DataFrame: every estimate as in memory; ``fitted`` and
    ``residuals`` are lazy Dask Series (one more pass over the partitions, on the
    complete rows, indexed by the partitions' row labels)."""

    def _per_row(self, kind: str):
        m = self.model
        if m.data is None:
            raise ValueError("this fit has no Dask DataFrame attached (it was loaded from a "
                             "file); compute fitted values with "
                             "mixedjax.outofcore.partition_fitted on each partition")
        args = (m.encoding, self._design.x_keep, self._beta, [np.asarray(b) for b in self._b],
                kind)
        if isinstance(m.data, list):
            return pd.concat([partition_fitted(p, *args) for p in m.data])
        name = "fitted" if kind == "fitted" else "residuals"
        return m.data.map_partitions(partition_fitted, *args,
                                     meta=pd.Series(dtype="f8", name=name))

    @property
    def fitted(self):
        """Fitted values X beta + Z b (+ offset): a lazy Dask Series (a pandas one for a
        fit from a list of pandas partitions)."""
        return self._per_row("fitted")

    @property
    def residuals(self):
        """Response less fitted values, as :attr:`fitted`."""
        return self._per_row("residuals")

    def summary(self, ddf: str | None = None):
        """lme4's summary (:meth:`LMMResult.summary`); its scaled residuals take one
        more pass over the partitions (and are left out for a fit loaded from a file,
        which has no partitions attached)."""
        view = _SummaryView.__new__(_SummaryView)
        view.__dict__.update(self.__dict__)
        view.pearson = None
        if self.model.data is not None:
            pearson = self._per_row("pearson")
            if not isinstance(pearson, pd.Series):
                pearson = pearson.compute()
            w = self._design.weights
            # The summary multiplies residuals by sqrt(design.weights), which here
            # holds the mean weight only: the per-row weights are already applied.
            view.pearson = pearson if w is None else pearson / np.sqrt(w[0])
        return LMMResult.summary(view, ddf)

    def predict(self, newdata=None, re_form=None, allow_new_levels: bool = False):
        """As :meth:`LMMResult.predict` for a pandas ``newdata``; without newdata, the
        lazy fitted values (all random effects only)."""
        if newdata is None:
            if re_form is not None:
                raise ValueError("predict() of a partitioned fit without newdata gives the "
                                 "fitted values (re_form=None); pass newdata for re_form")
            return self.fitted
        return super().predict(newdata, re_form, allow_new_levels)


class _SummaryView(PartitionedResult):
    """A partitioned fit whose residuals are computed (for its printed summary)."""

    @property
    def residuals(self):
        return self.pearson


# ----------------------------------------------------------------------------------
# The passes, as Dask graphs
# ----------------------------------------------------------------------------------
def _tree(items: list, merge, fan_in: int = 8):
    """A tree of ``merge(list)`` calls over delayed ``items`` (fan-in ``fan_in``)."""
    import dask
    step = dask.delayed(merge, pure=True)
    while len(items) > 1:
        items = [step(items[i:i + fan_in]) for i in range(0, len(items), fan_in)]
    return items[0]


def _pass(parts: list, fn, merge, *args):
    """``merge`` of ``fn(part, *args)`` over the partitions: a Dask graph for delayed
    partitions, a loop for pandas ones."""
    if isinstance(parts[0], pd.DataFrame):
        return merge([fn(p, *args) for p in parts])
    import dask
    call = dask.delayed(fn, pure=True)
    args = _shared(args)
    (out,) = dask.compute(_tree([call(p, *args) for p in parts], merge))
    return out


def _shared(values) -> list:
    """Each value as one named graph node, so that the tasks refer to it by key: it is
    neither hashed nor serialized once per partition (the encoding holds every level)."""
    import uuid

    import dask
    return [dask.delayed(v, name=f"mixedjax-arg-{uuid.uuid4().hex}", pure=False)
            for v in values]


def _sums_pass(parts: list, enc: Encoding, basis: dict, n_buckets: int) -> dict:
    """Pass 3 with the sparse entries reduced in ``n_buckets`` key ranges apart."""
    ms = [len(k) for k in enc.term_keys]
    if isinstance(parts[0], pd.DataFrame):
        return merge_sums([partition_sums(p, enc, basis) for p in parts])
    import dask
    call = dask.delayed(partition_sums, pure=True)
    split = dask.delayed(split_sums, pure=True, nout=n_buckets + 1)
    enc_d, basis_d = _shared([enc, basis])
    pieces = [split(call(p, enc_d, basis_d), n_buckets, ms) for p in parts]
    trees = [_tree([pc[b] for pc in pieces], merge_sums) for b in range(n_buckets + 1)]
    dense, *buckets = dask.compute(*trees)
    return {**dense, "pairs": _join_buckets(buckets)}


def _join_buckets(buckets: list) -> dict:
    """The sparse entries of the key ranges, joined in key order; each range's arrays
    are released once copied (the entries are the largest thing the client holds)."""
    pairs = {}
    for st in buckets[0]["pairs"]:
        parts = [b["pairs"][st] for b in buckets]
        keys = np.empty(sum(len(k) for k, _ in parts), parts[0][0].dtype)
        vals = np.empty((len(keys),) + parts[0][1].shape[1:], parts[0][1].dtype)
        lo = 0
        for i, b in enumerate(buckets):
            k, v = parts[i]
            parts[i] = b["pairs"][st] = None
            keys[lo:lo + len(k)], vals[lo:lo + len(k)] = k, v
            lo += len(k)
            del k, v
        pairs[st] = (keys, vals)
    return pairs


def _partitions(data):
    """(partitions, column dtypes) of a Dask DataFrame or of a list of pandas ones."""
    if is_dask_frame(data):
        return data.to_delayed(), data.dtypes
    if isinstance(data, (list, tuple)) and data and all(isinstance(p, pd.DataFrame)
                                                        for p in data):
        return list(data), data[0].dtypes
    raise TypeError("data must be a Dask DataFrame or a non-empty list of pandas "
                    f"DataFrames (its partitions), got {type(data).__name__}")


def partitioned_model(formula: str, ddf, reml: bool = True, weights=None, offset=None,
                      n_buckets: int | None = None) -> PartitionedLMM:
    """The :class:`PartitionedLMM` of an lme4 formula on a Dask DataFrame, or on a
    list of pandas DataFrames taken as its partitions (three passes over them;
    module docstring).  ``weights``/``offset``: column names; ``n_buckets``: key
    ranges in which Dask reduces the sparse cross-products apart (default: one per
    4 partitions, at least 1)."""
    parts, dtypes = _partitions(ddf)
    spec = model_spec(formula, dtypes, weights, offset)
    n_buckets = max(1, len(parts) // 4) if n_buckets is None else int(n_buckets)
    if n_buckets < 1:
        raise ValueError(f"n_buckets must be a positive integer, got {n_buckets}")
    enc = encoding(spec, _pass(parts, partition_levels, merge_levels, spec), dtypes)
    rsum = _pass(parts, partition_r, merge_r, enc)
    xinfo, perm, xnames_full, term_infos = enc.infos()
    basis = basis_from_r(rsum["R"], enc.p_full, weights is not None)
    keep, p, n = basis["keep"], basis["p"], rsum["n"]
    aliased = [nm for nm, k in zip(xnames_full, keep) if not k]
    if aliased:
        warn_user(f"fixed-effect model matrix is rank deficient: dropping {len(aliased)} "
                  f"column(s) {aliased}")
    terms = _terms(spec, enc, term_infos, n)
    if n <= p:
        raise ValueError(f"{n} observations are too few for {p} fixed effects")
    nparam = p + sum(t.k * (t.k + 1) // 2 for t in terms) + 1
    if nparam > n:
        raise ValueError(f"the model has {nparam} parameters but only {n} observations")
    sums = orthonormal_sums(_sums_pass(parts, enc, basis, n_buckets), basis)
    ms, ks = [t.nlevels for t in terms], [t.k for t in terms]
    blocks, placement = assemble(sums, ms, ks, p, n, rsum["ldw"])
    mean_w = rsum["sw"] / n if weights is not None else 1.0
    start = moment_theta(sums, ms, ks, n, p, mean_w)
    del sums
    rest = max(rsum["yy"] - rsum["ymax"] ** 2, 0.0)
    design = PartitionedDesign(
        formula=spec.parsed, y=np.array([rsum["ymax"], np.sqrt(rest)]),
        X=np.zeros((0, p)), xnames=[nm for nm, k in zip(xnames_full, keep) if k], terms=terms,
        n_dropped=enc.n_dropped, x_design_info=xinfo, x_perm=np.asarray(perm), x_keep=keep,
        aliased=aliased, response_name=spec.parsed.response,
        weights=None if weights is None else np.array([mean_w]), offset=None,
        weights_name=weights, offset_name=offset, nobs=n)
    return PartitionedLMM.from_sums(design, blocks, placement, reml, start, ddf, enc)


def _terms(spec, enc: Encoding, term_infos, n: int) -> list:
    """The random terms (lme4's order) with levels and encodings but no rows; the
    in-memory design's checks on their sizes."""
    terms = []
    for t, (info, cnames), keys, labels in zip(enc.term_order, term_infos, enc.term_keys,
                                               enc.term_labels):
        term = spec.parsed.random[t]
        nl, k = len(labels), len(cnames)
        if k == 0:
            raise ValueError(f"random-effects term {term} has no columns")
        if nl < 2:
            raise ValueError(f"grouping factor {term.group_name!r} of term {term} has "
                             f"{nl} level; a random effect needs at least 2 levels")
        if nl >= n or nl * k >= n:
            raise ValueError(f"term {term} has {nl * k} random effects for {n} "
                             "observations; the model is not identifiable")
        terms.append(ReTerm(expr=term.expr, group=term.group, levels=labels,
                            codes=np.zeros(0, np.int64), Z=np.zeros((0, k)), cnames=cnames,
                            design_info=info, level_keys=keys))
    return terms


def lmer(formula: str, data, reml: bool = True, theta0=None, max_iter: int | None = None,
         weights=None, offset=None, optimizer: str = "auto", control: dict | None = None,
         n_buckets: int | None = None):
    """Fit a linear mixed model to a Dask DataFrame by REML (default) or ML, as
    :func:`mixedjax.lmer` fits a pandas one (the same estimates to round-off);
    ``mixedjax.lmer`` of a Dask DataFrame calls this function.

    ``data``: a Dask DataFrame, or a list of pandas DataFrames (partitions read in
    turn); ``weights``/``offset``: column names; ``control``: ``{"max_iter": n}`` as
    :func:`mixedjax.lmer`; ``n_buckets``: see :func:`partitioned_model`.  The passes
    run on the current Dask scheduler (a ``distributed.Client`` when one is active);
    the optimization runs here.  A pandas (or polars, pyarrow) frame goes to the
    in-memory fit unchanged.
    """
    if not (is_dask_frame(data) or isinstance(data, (list, tuple))):
        from ..model import lmer as lmer_memory
        return lmer_memory(formula, data, reml=reml, theta0=theta0, max_iter=max_iter,
                           weights=weights, offset=offset, optimizer=optimizer,
                           control=control)
    if control is not None:
        if not isinstance(control, dict):
            raise TypeError(f"control must be a dict such as {{'max_iter': 500}}, got "
                            f"{type(control).__name__}")
        if set(control) - {"max_iter"}:
            raise ValueError(f"control accepts {{'max_iter': ...}} only, got {control!r}")
        if max_iter is not None and control.get("max_iter", max_iter) != max_iter:
            raise ValueError("max_iter is given both as an argument and in control; give it "
                             "once")
        max_iter = control.get("max_iter", max_iter)
    model = partitioned_model(formula, data, reml=reml, weights=weights, offset=offset,
                              n_buckets=n_buckets)
    return model.fit(theta0=theta0, max_iter=200 if max_iter is None else max_iter,
                     optimizer=optimizer)
