"""Fitted lme and gls models.

Names follow mixedjax's ``lmer`` results where they mean the same (``fixef``,
``stderr``, ``vcov``, ``sigma``, ``loglik``, ``aic``, ``bic``, ``ranef``,
``fitted``, ``residuals``, ``predict``, ``summary``, ``nobs``, ``converged``),
plus nlme's ``varstruct`` / ``corstruct`` (structure parameters as
``coef(..., unconstrained = FALSE)``), ``fixed_df`` / ``coef_table`` (nlme's
t-tests), ``apvar`` and ``intervals``.  Formulas: Pinheiro & Bates (2000),
sections 2.2-2.4 and 5.1-5.4.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
import numpy as np
import pandas as pd
import scipy.stats

from ..optim import STATUS
from ..frames import as_pandas
from . import likelihood as lik
from .dfrule import containment_df
from ..design import newdata_matrix
from ..persist import plain_state, save
from .grouping import label
from .model import free_indices

__all__ = ["LmeResult", "GlsResult", "blups"]



def blups(model, x, sol) -> list[np.ndarray]:
    """Best linear unbiased predictors b_t = Psi_t Z_t' V^-1 (y - X beta) per term.

    Pinheiro & Bates (2000), eq. 2.22; with Psi_t = sigma^2 Lambda_t Lambda_t' and
    V = sigma^2 V~ the sigma^2 cancel.  Returns ``(levels, k)`` arrays.
    """
    w = model.packing.unpad(np.asarray(sol.vinv_resid))
    theta = np.asarray(x)[:model.layout.ntheta]
    covs = lik.theta_to_covs(jnp.asarray(theta), model.layout.k)
    out = []
    for term, P in zip(model.terms, covs):
        codes = model.level_codes[term.level]
        S = np.zeros((len(model.level_labels[term.level]), term.k))
        np.add.at(S, codes, term.Z * w[:, None])
        out.append(S @ np.asarray(P))
    return out


class _NlmeResult:
    """Common part of :class:`LmeResult` and :class:`GlsResult`."""

    def __init__(self, model, x, solution, arrays, opt, x0, outer_iterations, elapsed):
        self.model = model
        self.x = np.asarray(x, dtype=np.float64)
        self._sol = solution
        self._arrays = arrays
        self.method = model.method
        self.reml = model.reml
        self.sigma = float(solution.sigma)
        self.loglik = float(solution.loglik)
        self._beta = np.asarray(solution.beta)
        self.optinfo = _optinfo(opt, x0, self.x, outer_iterations, elapsed)
        self.converged = self.optinfo["converged"]

    # -- sizes and criteria -----------------------------------------------------------
    @property
    def nobs(self) -> int:
        return self.model.n

    @property
    def n_dropped(self) -> int:
        return self.model.n_dropped

    @property
    def formula(self) -> str:
        return self.model.formula

    @property
    def objective(self) -> float:
        """-2 log-likelihood (REML criterion for REML fits)."""
        return -2.0 * self.loglik

    @property
    def npar(self) -> int:
        """Fixed effects, free covariance parameters and sigma (nlme's logLik df)."""
        return self.model.p + len(free_indices(self.model)) + 1

    @property
    def aic(self) -> float:
        return -2.0 * self.loglik + 2.0 * self.npar

    @property
    def bic(self) -> float:
        """BIC with nlme's number of observations (N - p for REML fits)."""
        n = self.nobs - (self.model.p if self.reml else 0)
        return -2.0 * self.loglik + self.npar * math.log(n)

    # -- fixed effects ----------------------------------------------------------------
    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self._beta, index=self.model.xnames, name="Value")

    def _vcov_scale(self) -> float:
        return self.sigma ** 2

    @functools.cached_property
    def vcov(self) -> pd.DataFrame:
        """sigma^2 (sum_i X_i' V~_i^-1 X_i)^-1 (Pinheiro & Bates 2000, eq. 2.26)."""
        V = self._vcov_scale() * np.asarray(self._sol.xtvx_inv)
        return pd.DataFrame(V, index=self.model.xnames, columns=self.model.xnames)

    @property
    def stderr(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.model.xnames,
                         name="Std.Error")

    def _table_se(self) -> np.ndarray:
        return self.stderr.to_numpy()

    @property
    def fixed_df(self) -> pd.Series:
        return pd.Series(self._fixed_df(), index=self.model.xnames, name="DF")

    @functools.cached_property
    def coef_table(self) -> pd.DataFrame:
        """Value, Std.Error, DF, t-value, p-value as nlme's ``summary()$tTable``."""
        est, se, df = self.fixef.to_numpy(), self._table_se(), self._fixed_df()
        t = est / se
        p = 2.0 * scipy.stats.t.sf(np.abs(t), df)
        return pd.DataFrame({"Value": est, "Std.Error": se, "DF": df, "t-value": t,
                             "p-value": p}, index=self.model.xnames)

    # -- structures -------------------------------------------------------------------
    def _part(self, which: int) -> np.ndarray:
        nt, nv, _ = self.model.layout.sizes
        bounds = [0, nt, nt + nv, self.model.layout.nparams]
        return self.x[bounds[which]:bounds[which + 1]]

    @property
    def varstruct(self) -> dict[str, float]:
        """Variance-function parameters (VarIdent: sd ratios to the first stratum)."""
        b = self.model.bvar
        return dict(zip(b.names, map(float, b.natural(self._part(1)))))

    @property
    def corstruct(self) -> dict[str, float]:
        """Correlation parameters: ``Phi``, ``Rho`` or CorSymm's ``cor(j,k)``."""
        b = self.model.bcor
        return dict(zip(b.names, map(float, b.natural(self._part(2)))))

    @property
    def cormatrix(self) -> pd.DataFrame | None:
        """CorSymm's estimated correlation matrix (None for other structures)."""
        b = self.model.bcor
        if b.kind != "symm":
            return None
        from .corstruct import symm_from_angles
        C = np.asarray(symm_from_angles(jnp.asarray(self._part(2)), b.size))
        names = [str(i + 1) for i in range(b.size)]
        return pd.DataFrame(C, index=names, columns=names)

    @property
    def varweights(self) -> pd.Series:
        """nlme's ``varWeights``: 1 / g(v, delta) per observation."""
        sd = self.model.packing.unpad(np.asarray(self._sol.sd))
        return pd.Series(1.0 / sd, index=self.model.data.index, name="weights")

    # -- fitted values, residuals, prediction -------------------------------------------
    @functools.cached_property
    def fitted(self) -> pd.Series:
        return pd.Series(self._linear_predictor(self.model.X, self._own_rows()),
                         index=self.model.data.index, name="fitted")

    @property
    def residuals(self) -> pd.Series:
        """Response residuals y - fitted (nlme's ``type = "response"``)."""
        return pd.Series(self.model.y - self.fitted.to_numpy(), index=self.model.data.index,
                         name="residuals")

    @property
    def pearson_residuals(self) -> pd.Series:
        """Residuals divided by sigma g(v, delta) (nlme's ``type = "pearson"``)."""
        return (self.residuals * self.varweights / self.sigma).rename("pearson")

    def predict(self, newdata: pd.DataFrame | None = None, level: int | None = None
                ) -> pd.Series:
        """Predictions at grouping ``level`` (0: population; default: innermost).

        Groups not seen in the fit give NaN at levels that use them, as in nlme.
        """
        level = self._check_level(level)
        if newdata is None:
            X, rows, index = self.model.X, self._own_rows(), self.model.data.index
        else:
            newdata = as_pandas(newdata, "newdata")
            d = self.model
            X = newdata_matrix(d.x_design_info, newdata, "fixed effects")[:, d.x_perm][:, d.x_keep]
            rows, index = self._new_rows(newdata, level), newdata.index
        rows = [r if t.level < level else None for r, t in zip(rows, self.model.terms)]
        return pd.Series(self._linear_predictor(X, rows), index=index, name="predicted")

    def _check_level(self, level):
        Q = len(self.model.levels)
        if level is None:
            return Q
        if not isinstance(level, (int, np.integer)) or not 0 <= level <= Q:
            raise ValueError(f"level must be an integer from 0 to {Q}, got {level!r}")
        return int(level)

    def _own_rows(self):
        return [(self.model.level_codes[t.level], t.Z) for t in self.model.terms]

    def _new_rows(self, newdata, level):
        rows = []
        for t in self.model.terms:
            if t.level >= level:
                rows.append(None)
                continue
            lev = self.model.levels[t.level]
            missing = [c for c in lev.columns if c not in newdata.columns]
            if missing:
                raise ValueError(f"newdata lacks grouping column(s) {missing}")
            lookup = {tuple(label(v) for v in k): i
                      for i, k in enumerate(self.model.level_keys[t.level])}
            keys = zip(*[newdata[c].map(label) for c in lev.columns])
            codes = np.array([lookup.get(tuple(k), -1) for k in keys], dtype=np.int64)
            rows.append((codes, newdata_matrix(t.design_info, newdata, f"random term {t.expr}")))
        return rows

    def _linear_predictor(self, X, rows):
        eta = X @ self._beta
        for row, b in zip(rows, self._blups):
            if row is None:
                continue
            codes, Z = row
            contrib = np.sum(Z * b[np.maximum(codes, 0)], axis=1)
            eta = eta + np.where(codes >= 0, contrib, np.nan)
        return eta

    @functools.cached_property
    def _blups(self):
        return blups(self.model, self.x, self._sol) if self.model.terms else []

    # -- the likelihood as a function ----------------------------------------------------
    @property
    def param_names(self) -> list[str]:
        """Names of the entries of ``x``: relative Cholesky factors of the random
        effects (lme4's theta layout), then the variance and correlation parameters
        on nlme's unconstrained scale."""
        names = []
        for t in self.model.terms:
            lev = self.model.levels[t.level].name
            for r, c in zip(*lik.tril_indices(t.k)):
                names.append(f"{lev}.{t.cnames[r]}" if r == c
                             else f"{lev}.{t.cnames[r]}.{t.cnames[c]}")
        names += [f"varStruct.{n}" for n in self.model.bvar.names]
        names += [f"corStruct.{n}" for n in self.model.bcor.names]
        return names

    def criterion(self, x=None):
        """-2 log-likelihood (REML criterion for REML fits) at parameters ``x``
        (default: the estimates), beta and sigma profiled out.

        Pure JAX in ``x``: ``jax.grad(m.criterion)``, ``jax.hessian`` and ``jax.vmap``
        apply (see :mod:`mixedjax.nlme.likelihood`).
        """
        x = jnp.asarray(self.x if x is None else x, dtype=jnp.float64)
        if x.shape[-1] != self.model.layout.nparams:
            raise ValueError(f"x must have {self.model.layout.nparams} entries "
                             f"({self.param_names}), got {x.shape[-1]}")
        return lik.criterion(x, self._arrays, self.model.layout)

    # -- inference and presentation -----------------------------------------------------
    @functools.cached_property
    def apvar(self) -> pd.DataFrame:
        """nlme's ``apVar``: approximate covariance of the variance parameters on the
        natural scale, inverse of the exact Hessian of -log-likelihood."""
        from .intervals import approximate_covariance
        return approximate_covariance(self)

    def intervals(self, level: float = 0.95, which: str = "all"):
        """Approximate confidence intervals as nlme's ``intervals``."""
        from .intervals import intervals
        return intervals(self, level=level, which=which)

    def summary(self):
        from .summary import NlmeSummary
        return NlmeSummary(self)

    def __repr__(self) -> str:
        return self.summary().text(brief=True)

    # -- pickling -------------------------------------------------------------------------
    # The model pickles itself (patsy's encodings as plain descriptions, see
    # NlmeModel); cached values are recomputed after loading.
    def __getstate__(self):
        return plain_state(self)

    def __setstate__(self, state):
        self.__dict__.update(state)

    def save(self, path) -> None:
        """Write the fit to the file ``path`` (with a format version);
        :func:`mixedjax.load` reads it back."""
        save(self, path)


class LmeResult(_NlmeResult):
    """A fitted :func:`mixedjax.lme` model."""

    def _table_se(self) -> np.ndarray:
        # nlme's summary.lme inflates ML standard errors by sqrt(N / (N - p)) in
        # the t-table (not in vcov or intervals).
        se = self.stderr.to_numpy()
        n, p = self.nobs, self.model.p
        return se if self.reml else se * np.sqrt(n / (n - p))

    def _fixed_df(self) -> np.ndarray:
        return containment_df(self.model.X, self.model.level_codes)

    def tidy(self, effects=("fixed", "ran_pars", "var_model"), scales: str = "sdcor",
             conf_int: bool = False, conf_level: float = 0.95) -> pd.DataFrame:
        """One row per estimate, as broom.mixed's ``tidy(m)`` (see :mod:`mixedjax.nlme.tidy`)."""
        from .tidy import tidy_lme
        return tidy_lme(self, effects=effects, scales=scales, conf_int=conf_int,
                        conf_level=conf_level)

    def glance(self) -> pd.DataFrame:
        """One row of fit statistics, as broom.mixed's ``glance(m)``."""
        from .tidy import glance_lme
        return glance_lme(self)

    @property
    def ngroups(self) -> dict[str, int]:
        return {lev.name: len(lab) for lev, lab in zip(self.model.levels,
                                                      self.model.level_labels)}

    @functools.cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """BLUPs per grouping level (nlme's ``ranef``), rows labelled ``a/b``."""
        out: dict[str, pd.DataFrame] = {}
        for t, b in zip(self.model.terms, self._blups):
            lev = self.model.levels[t.level]
            df = pd.DataFrame(b, columns=t.cnames,
                              index=pd.Index(self.model.level_labels[t.level], name=lev.name))
            out[lev.name] = pd.concat([out[lev.name], df], axis=1) if lev.name in out else df
        return out

    @property
    def covariances(self) -> list[np.ndarray]:
        """Psi_t = sigma^2 Lambda_t Lambda_t' of each random-effects term."""
        covs = lik.theta_to_covs(jnp.asarray(self._part(0)), self.model.layout.k)
        return [self.sigma ** 2 * np.asarray(P) for P in covs]

    @functools.cached_property
    def varcorr(self) -> pd.DataFrame:
        """Rows grp, var1, var2, vcov, sdcor as for lmer results."""
        rows = []
        for t, P in zip(self.model.terms, self.covariances):
            grp = self.model.levels[t.level].name
            sd = np.sqrt(np.diag(P))
            for j, nm in enumerate(t.cnames):
                rows.append((grp, nm, None, P[j, j], sd[j]))
            for j in range(t.k):
                for i in range(j + 1, t.k):
                    rows.append((grp, t.cnames[j], t.cnames[i], P[i, j],
                                 P[i, j] / (sd[i] * sd[j])))
        rows.append(("Residual", None, None, self.sigma ** 2, self.sigma))
        cols = list(zip(*rows))
        return pd.DataFrame({"grp": pd.Series(cols[0], dtype=object),
                             "var1": pd.Series(cols[1], dtype=object),
                             "var2": pd.Series(cols[2], dtype=object),
                             "vcov": np.asarray(cols[3], float),
                             "sdcor": np.asarray(cols[4], float)})


class GlsResult(_NlmeResult):
    """A fitted :func:`mixedjax.gls` model."""

    def _fixed_df(self) -> np.ndarray:
        return np.full(self.model.p, self.nobs - self.model.p, dtype=np.int64)

    def _vcov_scale(self) -> float:
        # nlme's gls scales the coefficients' covariance by r / (N - p) also for
        # ML fits (whose sigma is sqrt(r / N)).
        n, p = self.nobs, self.model.p
        return self.sigma ** 2 * (n / (n - p) if not self.reml else 1.0)

    @property
    def ranef(self) -> dict[str, pd.DataFrame]:
        return {}

    def tidy(self, conf_int: bool = False, conf_level: float = 0.95) -> pd.DataFrame:
        """One row per coefficient, as broom.mixed's ``tidy(m)`` (see :mod:`mixedjax.nlme.tidy`)."""
        from .tidy import tidy_gls
        return tidy_gls(self, conf_int=conf_int, conf_level=conf_level)

    def glance(self) -> pd.DataFrame:
        """One row of fit statistics, as broom.mixed's ``glance(m)``."""
        from .tidy import glance_gls
        return glance_gls(self)


def _optinfo(opt, x0, x, outer, elapsed) -> dict:
    if opt is None:  # nothing to optimize
        return {"optimizer": "none (no free parameters)", "iterations": 0,
                "converged": True, "status": 0, "message": "no free parameters",
                "grad_max": 0.0, "x0": np.asarray(x0), "x": x, "seconds": elapsed,
                "outer_iterations": outer}
    evals = np.linalg.eigvalsh(np.asarray(opt.hess))
    return {"optimizer": "Newton (exact Hessian)", "iterations": int(opt.iterations),
            "fun_evals": int(opt.fun_evals), "converged": bool(opt.converged),
            "status": int(opt.status), "message": STATUS.get(int(opt.status), "unknown"),
            "grad_max": float(np.max(np.abs(opt.grad))),
            "hessian_min_eigenvalue": float(evals[0]), "x0": np.asarray(x0), "x": x,
            "seconds": elapsed, "outer_iterations": outer}
