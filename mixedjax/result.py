"""The fitted model: estimates, variance components, BLUPs, predictions.

Names follow lme4: ``fixef``, ``ranef``, ``varcorr``, ``theta``, ``sigma``,
``vcov``, ``objective`` (-2 log-likelihood or the REML criterion), ``loglik``,
``aic``, ``bic``.  Formulas: Bates et al. (2015), JSS 67(1), section 3.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import pandas as pd

from . import factor
from .frames import as_pandas
from ._warn import warn_user
from .backend import NUMPY
from .criterion import condvar, dof, value
from .design import newdata_matrix, terms_in_re_form
from .levels import map_levels
from .optim import STATUS
from .persist import plain_state, save
from .structure import diagonal_mask, lambdas, per_term, per_term_blocks

__all__ = ["LMMResult"]

SINGULAR_TOL = 1e-4  # lme4's isSingular tolerance on theta's diagonal elements


class LMMResult:
    """A fitted linear mixed model (a new object per fit; nothing is mutated)."""

    def __init__(self, model, out, theta0, elapsed: float, optimizer: str = "newton"):
        self.model = model
        self._design = model.design
        s = model.structure
        p = self._design.p
        self.reml = model.reml
        self.theta = np.asarray(out.theta, dtype=np.float64)
        sol = out.solution
        nu = float(dof(model.blocks, model.reml, np))
        self.sigma = float(np.sqrt(sol.pwrss / nu))
        self.objective = float(out.objective)
        self._beta = np.asarray(sol.beta)[:p]
        self._sol = sol
        opt = out.opt
        evals = np.linalg.eigvalsh(np.asarray(opt.hess))
        self.converged = bool(opt.converged)
        self.optinfo = {
            "optimizer": ("BFGS (exact gradient)" if optimizer == "bfgs"
                          else "Newton (exact Hessian)"),
            "iterations": int(opt.iterations),
            "fun_evals": int(opt.fun_evals),
            "grad_max": float(np.max(np.abs(opt.grad))) if np.size(opt.grad) else 0.0,
            "hessian_min_eigenvalue": float(evals[0]) if evals.size else float("nan"),
            "converged": self.converged,
            "status": int(opt.status),
            "message": STATUS.get(int(opt.status), "unknown"),
            "theta0": np.asarray(theta0, dtype=np.float64),
            "theta_raw": np.asarray(opt.x),
            "seconds": elapsed,
        }
        if s.basis:
            # The search ran in centred columns (structure.centring_basis): the
            # gradient, Hessian and theta_raw above are in those coordinates.
            self.optinfo["coordinates"] = "centred random-effects columns"
        # Relative covariance factors and spherical random effects, per term.
        self._lambdas = lambdas(self.theta, s)
        self._u = per_term(np.asarray(sol.u0), None if sol.u_mid is None else np.asarray(sol.u_mid),
                           np.asarray(sol.u_border), s, model.placement)

    # -- basic quantities ------------------------------------------------------------
    @property
    def nobs(self) -> int:
        return self._design.n

    @property
    def n_dropped(self) -> int:
        """Rows dropped because of missing values in the model's columns."""
        return self._design.n_dropped

    @property
    def formula(self) -> str:
        return self._design.formula.formula

    @property
    def ngroups(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for t in self._design.terms:
            out.setdefault(t.group_name, t.nlevels)
        return out

    @property
    def npar(self) -> int:
        """Number of parameters: fixed effects, theta, and sigma."""
        return self._design.p + len(self.theta) + 1

    @property
    def loglik(self) -> float:
        """Log-likelihood (the REML log-likelihood for REML fits), as R's logLik."""
        return -0.5 * self.objective

    @property
    def deviance(self) -> float:
        """-2 log-likelihood at the estimates of an ML fit (lme4's ``deviance``).  For a
        REML fit lme4 (1.1) warns and returns the REML criterion; so does this
        property: use :attr:`reml_crit` for it."""
        if self.reml:
            warn_user("deviance of a REML fit is the REML criterion (lme4 deprecates "
                      "deviance() for REML fits); use reml_crit for it, or refit with "
                      "reml=False for the deviance")
        return self.objective

    @functools.cached_property
    def reml_crit(self) -> float:
        """The REML criterion (-2 REML log-likelihood), lme4's ``REMLcrit``: the
        criterion at convergence of a REML fit; for an ML fit, the REML criterion
        evaluated at the ML estimate of theta (lme4's ``devCrit(REML = TRUE)``)."""
        if self.reml:
            return self.objective
        with np.errstate(invalid="ignore", divide="ignore"):
            return float(value(self.theta, self.model.blocks, True, NUMPY))

    @property
    def aic(self) -> float:
        return self.objective + 2.0 * self.npar

    @property
    def bic(self) -> float:
        return self.objective + self.npar * math.log(self.nobs)

    @property
    def df_resid(self) -> int:
        return self.nobs - self.npar

    @property
    def singular(self) -> bool:
        """True when a variance or a covariance factor is (numerically) singular."""
        diag = diagonal_mask(self.model.structure)
        return bool(np.any(np.abs(self.theta[diag]) < SINGULAR_TOL))

    # -- fixed effects ---------------------------------------------------------------
    @property
    def fixef(self) -> pd.Series:
        return pd.Series(self._beta, index=self._design.xnames, name="Estimate")

    @functools.cached_property
    def vcov(self) -> pd.DataFrame:
        """sigma^2 (R_X' R_X)^-1 (JSS eq. 54), mapped from the stable basis."""
        p = self._design.p
        Rxx = np.asarray(self._sol.rxx)
        Linv = NUMPY.tri_inv(np.tril(Rxx)) if p else np.zeros((0, 0))
        V = factor.back_vcov(np.asarray(self.model.blocks.rx),
                             self.sigma ** 2 * (Linv.T @ Linv), NUMPY)
        names = self._design.xnames
        return pd.DataFrame(V, index=names, columns=names)

    @property
    def stderr(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self._design.xnames,
                         name="Std. Error")

    # -- random effects --------------------------------------------------------------
    @functools.cached_property
    def _b(self) -> list[np.ndarray]:
        """Random effects b = Lambda u per term, (levels, k)."""
        return [u @ lam.T for u, lam in zip(self._u, self._lambdas)]

    @functools.cached_property
    def ranef(self) -> dict[str, pd.DataFrame]:
        """Conditional modes (BLUPs) per grouping factor, as lme4's ``ranef``.

        Terms on the same grouping factor (as from ``(x || g)``) are joined.
        """
        out: dict[str, pd.DataFrame] = {}
        for t, b in zip(self._design.terms, self._b):
            df = pd.DataFrame(b, index=pd.Index(t.levels, name=t.group_name), columns=t.cnames)
            if t.group_name in out:
                out[t.group_name] = pd.concat([out[t.group_name], df], axis=1)
            else:
                out[t.group_name] = df
        return out

    @functools.cached_property
    def ranef_condvar(self) -> dict[str, np.ndarray]:
        """Conditional covariance of the random effects given the data and beta-hat.

        Per grouping factor an array (levels, k, k): sigma^2 Lambda
        [(Lambda'Z'Z Lambda + I)^-1]_{level block} Lambda', lme4's ``condVar``.
        """
        m = self.model
        with np.errstate(invalid="ignore", divide="ignore"):
            blocks = per_term_blocks(*condvar(self.theta, m.blocks), m.structure, m.placement)
        out: dict[str, list] = {}
        for t, blk, lam in zip(self._design.terms, blocks, self._lambdas):
            cv = self.sigma ** 2 * (lam @ np.asarray(blk)[:t.nlevels] @ lam.T)
            out.setdefault(t.group_name, []).append(cv)
        joined = {}
        for g, parts in out.items():
            if len(parts) == 1:
                joined[g] = parts[0]
                continue
            n = parts[0].shape[0]
            k = sum(p.shape[1] for p in parts)
            full = np.zeros((n, k, k))
            off = 0
            for part in parts:
                kk = part.shape[1]
                full[:, off:off + kk, off:off + kk] = part
                off += kk
            joined[g] = full
        return joined

    @property
    def ranef_se(self) -> dict[str, pd.DataFrame]:
        """Conditional standard deviations of the BLUPs (sqrt of condVar diagonals)."""
        return {g: pd.DataFrame(np.sqrt(np.diagonal(cv, axis1=1, axis2=2)),
                                index=self.ranef[g].index, columns=self.ranef[g].columns)
                for g, cv in self.ranef_condvar.items()}

    # -- variance components ---------------------------------------------------------
    @property
    def covariances(self) -> list[np.ndarray]:
        """Covariance matrix sigma^2 Lambda Lambda' of each term's random effects."""
        return [self.sigma ** 2 * lam @ lam.T for lam in self._lambdas]

    @functools.cached_property
    def varcorr(self) -> pd.DataFrame:
        """Rows as R's ``as.data.frame(VarCorr(m))``: grp, var1, var2, vcov, sdcor."""
        rows = []
        seen: dict[str, int] = {}
        for t, cov in zip(self._design.terms, self.covariances):
            count = seen.get(t.group_name, 0)
            seen[t.group_name] = count + 1
            grp = t.group_name if count == 0 else f"{t.group_name}.{count}"
            sd = np.sqrt(np.diag(cov))
            for j, name in enumerate(t.cnames):
                rows.append((grp, name, None, cov[j, j], sd[j]))
            for j in range(t.k):
                for i in range(j + 1, t.k):
                    denom = sd[i] * sd[j]
                    corr = cov[i, j] / denom if denom > 0 else float("nan")
                    rows.append((grp, t.cnames[j], t.cnames[i], cov[i, j], corr))
        rows.append(("Residual", None, None, self.sigma ** 2, self.sigma))
        cols = list(zip(*rows))
        # object columns keep None (R's NA) distinct from names; pandas' string dtype
        # would turn None into NaN.
        return pd.DataFrame({
            "grp": pd.Series(cols[0], dtype=object), "var1": pd.Series(cols[1], dtype=object),
            "var2": pd.Series(cols[2], dtype=object),
            "vcov": np.asarray(cols[3], dtype=float), "sdcor": np.asarray(cols[4], dtype=float)})

    # -- fitted values and prediction -------------------------------------------------
    def _linear_predictor(self, X, term_rows, offset=None):
        eta = X @ self._beta
        if offset is not None:
            eta = eta + offset
        for (codes, Z), b in zip(term_rows, self._b):
            if codes is None:
                continue
            known = codes >= 0
            contrib = np.zeros(len(eta))
            contrib[known] = np.sum(Z[known] * b[codes[known]], axis=1)
            eta = eta + contrib
        return eta

    @functools.cached_property
    def fitted(self) -> pd.Series:
        d = self._design
        eta = self._linear_predictor(d.X, [(t.codes, t.Z) for t in d.terms], d.offset)
        return pd.Series(eta, index=d.row_index, name="fitted")

    @property
    def residuals(self) -> pd.Series:
        return pd.Series(self._design.y - self.fitted.to_numpy(), index=self._design.row_index,
                         name="residuals")

    def predict(self, newdata: pd.DataFrame | None = None, re_form=None,
                allow_new_levels: bool = False) -> pd.Series:
        """Predictions for ``newdata`` (default: the fitted data).

        ``re_form=None`` includes every random effect; ``"~0"`` (or ``"NA"``) gives
        population-level predictions.  A level not seen in the fit contributes 0 (the
        population mean) when ``allow_new_levels`` is True; otherwise it is an error.
        """
        include = terms_in_re_form(re_form, self._design.terms)
        if newdata is None:
            if all(include):
                return self.fitted.rename("predicted")
            newdata_rows = self._design
            X = newdata_rows.X
            rows = [(t.codes, t.Z) if inc else (None, None)
                    for t, inc in zip(self._design.terms, include)]
            return pd.Series(self._linear_predictor(X, rows, self._design.offset),
                             index=self._design.row_index, name="predicted")
        newdata = as_pandas(newdata, "newdata")
        d = self._design
        X = newdata_matrix(d.x_design_info, newdata, "fixed effects")[:, d.x_perm][:, d.x_keep]
        rows = []
        for t, inc in zip(d.terms, include):
            if not inc:
                rows.append((None, None))
                continue
            Z = newdata_matrix(t.design_info, newdata, f"random term ({t.expr} | {t.group_name})")
            codes = map_levels(t, newdata, allow_new_levels)
            rows.append((codes, Z))
        # An offset given as a column is taken from newdata; one given as an array
        # belongs to the fitted rows only and is left out, as lme4's predict does.
        offset = None
        if d.offset_name is not None:
            if d.offset_name not in newdata.columns:
                raise ValueError(f"newdata lacks the offset column {d.offset_name!r}")
            offset = newdata[d.offset_name].to_numpy(dtype=np.float64)
        return pd.Series(self._linear_predictor(X, rows, offset), index=newdata.index,
                         name="predicted")

    # -- saving ---------------------------------------------------------------------
    # A fit pickles with its model and design (patsy's encodings as plain
    # descriptions, mixedjax.persist); cached values are recomputed after loading.
    def __getstate__(self):
        return plain_state(self)

    def __setstate__(self, state):
        self.__dict__.update(state)

    def save(self, path) -> None:
        """Write the fit to the file ``path``; :func:`mixedjax.load` reads it back.

        The file holds a format version and the pickled fit: the model, its design
        (formula, factor levels, contrasts, the state of stateful transforms such as
        ``center(x)``) and the estimates, so the loaded fit predicts new data, prints
        its summary, refits and bootstraps as the original does.  Loading unpickles:
        load only files you trust.
        """
        save(self, path)

    # Inference, simulation, sensitivity and report methods (coef_table, anova, confint,
    # simulate, bootstrap, summary, __repr__, ...) are computed by layers above this one;
    # mixedjax.methods attaches them when the package is imported.
