"""Within-group correlation structures, as nlme's ``corStruct`` classes.

The within-group errors of group i have Var(eps_i) = sigma^2 S_i C_i S_i with
S_i the diagonal of variance-function multipliers and C_i a correlation matrix
(Pinheiro & Bates 2000, section 5.3).  Positions/times t come from the form's
covariate (``~ Time | g``) or, for ``~ 1 | g``, from the order of the rows within
the group.

=================  ==================================  ==============================
class              correlation of t_j, t_k             unconstrained parameter
=================  ==================================  ==============================
``CorAR1``         phi^|t_j - t_k|, integer t          log((1 + phi) / (1 - phi))
``CorCAR1``        phi^|t_j - t_k|, 0 < phi < 1        log(phi / (1 - phi))
``CorCompSymm``    rho                                 log((rho - a) / (1 - rho)),
                                                       a = -1 / (maxLen - 1)
``CorSymm``        C[t_j, t_k], C unstructured         spherical angles (below)
=================  ==================================  ==============================

CorSymm (Pinheiro & Bates 1996, "Unconstrained parametrizations for
variance-covariance matrices", Stat. Comput. 6): C = L L' with row i of L the
unit vector (cos a_i1, sin a_i1 cos a_i2, ..., prod_k sin a_ik), angles
a = pi e^u / (1 + e^u), parameters ordered row by row.  Its reported values are
the correlations C[j, k], j < k, ordered by j then k.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from .grouping import Form, parse_form, sorted_positions
from .varfunc import StructSpec, covariate_values

__all__ = ["CorStruct", "CorAR1", "CorCAR1", "CorCompSymm", "CorSymm", "BoundCor",
           "correlation", "symm_from_angles", "NO_CORRELATION"]


@dataclass(frozen=True)
class BoundCor:
    """A correlation structure evaluated on the data (static, hashable).

    ``size``: AR1 the largest lag, CompSymm the largest group, CorSymm the number
    of positions.
    """

    kind: str
    form: str
    names: tuple[str, ...]
    start: tuple[float, ...]
    fixed: bool
    size: int
    description: str
    table: int = 1

    @property
    def nparams(self) -> int:
        return len(self.start)

    @property
    def spec(self) -> StructSpec:
        size = {"ar1": self.table, "symm": self.size}.get(self.kind, 1)
        return StructSpec(self.kind, self.nparams, size)

    @property
    def inf(self) -> float:
        """CorCompSymm's lower bound -1/(maxLen - 1) (0 for the others)."""
        return -1.0 / (self.size - 1) if self.kind == "cs" else 0.0

    def natural(self, params) -> np.ndarray:
        """Unconstrained -> reported values (``coef(..., unconstrained = FALSE)``)."""
        u = np.asarray(params, dtype=np.float64)
        if self.kind == "ar1":
            return np.tanh(u / 2)
        if self.kind == "car1":
            return 1 / (1 + np.exp(-u))
        if self.kind == "cs":
            inf = -1.0 / (self.size - 1)
            return (np.exp(u) + inf) / (np.exp(u) + 1)
        if self.kind == "symm":
            C = np.asarray(symm_from_angles(jnp.asarray(u), self.size))
            return C[np.triu_indices(self.size, 1)]
        return u


NO_CORRELATION = BoundCor(kind="none", form="", names=(), start=(), fixed=True, size=1,
                          description="")


def symm_from_angles(u, M: int):
    """CorSymm's correlation matrix from its unconstrained parameters (module doc).

    Vectorized: with A the strictly lower matrix of angles (filled row by row),
    L[i, j] = cos(A[i, j]) prod_{k<j} sin(A[i, k]) and L[i, i] = prod_{k<i} sin(A[i, k]);
    the products are exp of prefix sums of log sin, taken as one matrix product.
    """
    rows, cols = np.tril_indices(M, -1)  # row by row: nlme's parameter order
    angles = jnp.zeros((M, M), u.dtype).at[rows, cols].set(jnp.pi * jax.nn.sigmoid(u))
    lower = np.tril(np.ones((M, M), bool), -1)
    log_sin = jnp.where(lower, jnp.log(jnp.sin(angles)), 0.0)
    prefix = log_sin @ np.triu(np.ones((M, M)), 1)     # sum over k < j
    factor = jnp.where(lower, jnp.cos(angles), np.eye(M))
    L = jnp.exp(prefix) * factor
    return L @ L.T


def symm_from_natural(z, M: int):
    """CorSymm's matrix from log((1 + rho) / (1 - rho)) of each correlation."""
    rows, cols = np.triu_indices(M, 1)
    rho = jnp.tanh(z / 2)
    C = jnp.eye(M, dtype=z.dtype).at[rows, cols].set(rho)
    return C.at[cols, rows].set(rho)


def correlation(spec: StructSpec, params, time, sub, inf, natural: bool = False):
    """Batch of within-block correlation matrices C_i, ``(G, m, m)``.

    ``time``: position/time per padded row; ``sub``: correlation-group code per
    row (rows correlate only within the same code; -1 marks padding); ``inf``:
    CorCompSymm's lower bound.  With ``natural`` CorSymm takes
    log((1+rho)/(1-rho)) per correlation, as nlme's approximate covariance
    (``apVar``) does.
    """
    m = sub.shape[1]
    eye = jnp.eye(m, dtype=time.dtype)
    same = (sub[:, :, None] == sub[:, None, :]) & (sub[:, :, None] >= 0)
    if spec.kind == "none":
        return jnp.broadcast_to(eye, same.shape)
    dt = jnp.abs(time[:, :, None] - time[:, None, :])
    if spec.kind == "ar1":
        # Integer lags index a table of powers: phi = 0 (nlme's start) has finite
        # derivatives.
        lag = jnp.round(jnp.clip(dt, 0, spec.size)).astype(jnp.int32)
        C = _lag_powers(jnp.tanh(params[0] / 2), spec.size)[lag]
    elif spec.kind == "car1":
        C = jnp.exp(dt * jax.nn.log_sigmoid(params[0]))
    elif spec.kind == "cs":
        e = jnp.exp(params[0])
        C = jnp.where(eye > 0, 1.0, (e + inf) / (e + 1))
    elif spec.kind == "symm":
        full = (symm_from_natural(params, spec.size) if natural
                else symm_from_angles(params, spec.size))
        pos = jnp.clip(time, 0, spec.size - 1).astype(jnp.int32)
        C = full[pos[:, :, None], pos[:, None, :]]
    else:
        raise ValueError(f"unknown correlation structure {spec.kind!r}")
    return jnp.where(same, C, 0.0)


def _lag_powers(phi, size: int):
    """[1, phi, phi^2, ..., phi^size] by doubling (log2(size) products; exact
    derivatives at phi = 0, unlike exp(k log|phi|))."""
    powers, base = jnp.ones(1, phi.dtype), phi
    while powers.shape[0] < size + 1:
        powers = jnp.concatenate([powers, powers * base])
        base = base * base
    return powers[:size + 1]


class CorStruct:
    """Base class of the correlation structures (a specification)."""

    kind = ""
    default_form = "~ 1"
    description = ""

    def __init__(self, form: str = None, value=None, fixed: bool = False):
        form = self.default_form if form is None else form
        self._form: Form = parse_form(form, type(self).__name__)
        self.form = self._form.text
        self.value = value
        self.fixed = bool(fixed)

    def __repr__(self) -> str:
        extra = "" if self.value is None else f", value={self.value!r}"
        extra += ", fixed=True" if self.fixed else ""
        return f"{type(self).__name__}({self.form!r}{extra})"

    @property
    def levels(self) -> tuple[tuple[str, ...], ...]:
        return self._form.levels

    @property
    def covariate(self) -> str | None:
        return self._form.covariate

    def columns(self) -> list[str]:
        from ..formula import formula_variables
        cols = [c for lev in self._form.levels for c in lev]
        if self.covariate is not None:
            cols += formula_variables(self.covariate)
        return cols

    def _times(self, data, sub, order) -> np.ndarray:
        """Covariate per row, or 0-based position within the group (data order)."""
        if self.covariate is None:
            return sorted_positions(sub, order).astype(np.float64)
        t = covariate_values(data, self.covariate, type(self).__name__)
        dup = pd.DataFrame({"g": sub, "t": t}).duplicated()
        if dup.any():
            row = data.index[np.flatnonzero(dup.to_numpy())[0]]
            raise ValueError(f"{type(self).__name__}({self.form!r}): covariate "
                             f"{self.covariate!r} repeats a value within a group (row "
                             f"{row!r}); times must be unique within each group")
        return t

    def bind(self, data: pd.DataFrame, sub: np.ndarray, order: np.ndarray):
        """Evaluate on ``data`` with correlation-group codes ``sub``.

        Returns ``(BoundCor, time per row)``.
        """
        t = self._times(data, sub, order)
        size, t = self._size(t, sub)
        names, start = self._parameters(size)
        # The AR1 lag table (unused entries are harmless); its length is rounded up
        # to a power of two so that fits with similar groups share compiled code.
        table = max(8, 1 << (max(size, 1) - 1).bit_length())
        bound = BoundCor(kind=self.kind, form=self.form, names=tuple(names),
                         start=tuple(float(v) for v in start), fixed=self.fixed,
                         size=int(size), description=self.description, table=int(table))
        return bound, t

    def _start(self, default: float, n: int = 1):
        v = default if self.value is None else self.value
        v = np.asarray(v, dtype=np.float64).reshape(-1)
        if v.size != n:
            raise ValueError(f"{type(self).__name__}: value must have {n} entr"
                             f"{'y' if n == 1 else 'ies'}, got {v.size}")
        return v


class CorAR1(CorStruct):
    """Autoregressive of order 1: corr = phi^|t_j - t_k| (nlme ``corAR1``).

    ``"~ 1 | g"``: t = order of the rows within the group; ``"~ Time | g"``:
    integer times (gaps allowed; nlme's corARMA(p = 1) for unequal spacing).
    With a time covariate the rows need not be in time order: the lags come from
    the times.  Repeated or non-integer times are an error.
    """

    kind = "ar1"
    description = "AR(1)"

    def bind(self, data: pd.DataFrame, sub: np.ndarray, order: np.ndarray):
        bound, t = super().bind(data, sub, order)
        # Unequally spaced times make nlme switch to corARMA(p = 1), which names
        # the same parameter "Phi1".
        steps = pd.DataFrame({"g": sub, "t": t}).sort_values(["g", "t"]).groupby("g")["t"].diff()
        if (steps.dropna() != 1).any():
            bound = dataclasses.replace(bound, names=("Phi1",), description="ARMA(1,0)")
        return bound, t

    def _size(self, t, sub):
        if self.covariate is not None and not np.allclose(t, np.round(t), rtol=0, atol=1e-8):
            raise ValueError(f"CorAR1({self.form!r}): covariate {self.covariate!r} must "
                             "hold integer times; use CorCAR1 for continuous times")
        t = np.round(t)
        span = pd.Series(t).groupby(sub).agg(lambda s: s.max() - s.min())
        return max(int(span.max()), 1), t

    def _parameters(self, size):
        phi = self._start(0.0)[0]
        if not -1 < phi < 1:
            raise ValueError(f"CorAR1: value must lie in (-1, 1), got {phi}")
        return ("Phi",), [np.log((1 + phi) / (1 - phi))]


class CorCAR1(CorStruct):
    """Continuous-time AR(1): corr = phi^|t_j - t_k|, 0 < phi < 1 (nlme ``corCAR1``)."""

    kind = "car1"
    description = "Continuous AR(1)"

    def _size(self, t, sub):
        return 1, t

    def _parameters(self, size):
        phi = self._start(0.2)[0]
        if not 0 < phi < 1:
            raise ValueError(f"CorCAR1: value must lie in (0, 1), got {phi}")
        return ("Phi",), [np.log(phi / (1 - phi))]


class CorCompSymm(CorStruct):
    """Compound symmetry: equal correlation rho within a group (nlme ``corCompSymm``)."""

    kind = "cs"
    description = "Compound symmetry"

    def _size(self, t, sub):
        size = int(np.bincount(sub).max())
        if size < 2:
            raise ValueError(f"CorCompSymm({self.form!r}): every group has a single "
                             "observation; there is no correlation to estimate")
        return size, t

    def _parameters(self, size):
        rho = self._start(0.0)[0]
        inf = -1.0 / (size - 1)
        if not inf < rho < 1:
            raise ValueError(f"CorCompSymm: value must lie in ({inf:.4g}, 1), got {rho}")
        return ("Rho",), [np.log((rho - inf) / (1 - rho))]


class CorSymm(CorStruct):
    """Unstructured (general) correlation matrix (nlme ``corSymm``).

    ``"~ 1 | g"``: positions are the order within the group; ``"~ k | g"``: k takes
    the consecutive integers 1..M.
    """

    kind = "symm"
    description = "General"

    def _size(self, t, sub):
        if self.covariate is None:
            return int(t.max()) + 1, t
        uniq = np.unique(t)
        if not np.array_equal(uniq, np.arange(1, len(uniq) + 1)):
            raise ValueError(f"CorSymm({self.form!r}): covariate {self.covariate!r} must "
                             "take the consecutive integer values 1, 2, ..., M")
        return len(uniq), t - 1

    def _parameters(self, size):
        if size < 2:
            raise ValueError(f"CorSymm({self.form!r}): every group has a single "
                             "observation; there is no correlation to estimate")
        npar = size * (size - 1) // 2
        names = [f"cor({j + 1},{k + 1})" for j, k in zip(*np.triu_indices(size, 1))]
        if self.value is None:
            return names, [0.0] * npar
        rho = self._start(0.0, npar)
        C = np.eye(size)
        C[np.triu_indices(size, 1)] = rho
        C = np.triu(C) + np.triu(C, 1).T
        if np.any(np.linalg.eigvalsh(C) <= 0):
            raise ValueError("CorSymm: value does not give a positive-definite "
                             "correlation matrix")
        return names, _angles_from_corr(C)


def _angles_from_corr(C: np.ndarray) -> list[float]:
    """Inverse of :func:`symm_from_angles` (for user-given initial correlations)."""
    L = np.linalg.cholesky(C)
    out = []
    for i in range(1, len(C)):
        row = L[i, :i + 1]
        tail = np.sqrt(np.cumsum(row[::-1] ** 2)[::-1])
        a = np.arccos(np.clip(row[:i] / tail[:i], -1, 1))
        out += list(np.log(a / (np.pi - a)))
    return out
