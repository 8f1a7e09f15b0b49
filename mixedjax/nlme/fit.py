"""``lme`` and ``gls``: build the model, maximize the likelihood, return a result.

All free parameters (random-effects factors, variance and correlation
parameters, on nlme's unconstrained scale) are optimized together by damped
Newton with the exact autodiff Hessian (:func:`mixedjax.compiled.newton`)
on the profiled criterion of :mod:`mixedjax.nlme.likelihood`.  Starting values:
identity relative covariance factors (as lme4), and nlme's starting values for
the structures (0 on the unconstrained scale; CorCAR1 phi = 0.2) unless
``value`` is given.

A variance function of the fitted values (``VarPower()``) is handled as nlme
does (Pinheiro & Bates 2000, section 5.2.1): fit with the covariate held at the
current fitted values (least-squares fitted values to start), recompute the
fitted values (innermost level for lme), and repeat until the parameters change
by less than ``tolerance`` (relative).  nlme stops as soon as two successive
optimizer solutions agree, which a warm-started optimizer can report before the
alternation has settled; with the tight default tolerance here the result is
the alternation's fixed point, which nlme reaches when its own alternation is
continued.
"""

from __future__ import annotations

import functools
import time
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from ..fitting import ConvergenceWarning, check_response
from ..compiled import newton
from . import likelihood as lik
from .model import NlmeModel, build_model, free_indices

__all__ = ["lme", "gls", "fit_model"]


@functools.partial(jax.jit, static_argnames=("layout", "free", "max_iter"))
def _fit(xf0, base, A, layout, free, max_iter):
    """Newton on the free parameters, then the estimates there (one compiled call)."""
    idx = np.asarray(free, dtype=np.int64)
    if not free:
        return None, base, lik.solve(base, A, layout)

    def f(xf, A):
        return lik.criterion(base.at[idx].set(xf), A, layout)
    opt = newton(f, xf0, A, max_iter=max_iter)
    x = base.at[idx].set(opt.x)
    return opt, x, lik.solve(x, A, layout)


def initial_params(model: NlmeModel) -> np.ndarray:
    """Identity factors for the random effects, the structures' own starts."""
    parts = []
    for k in model.layout.k:
        r, c = lik.tril_indices(k)
        parts.append((r == c).astype(np.float64))
    parts += [np.asarray(model.bvar.start), np.asarray(model.bcor.start)]
    return np.concatenate([np.asarray(p, np.float64).reshape(-1) for p in parts])


def _optimize(model, arrays, x0, free, max_iter):
    out = _fit(jnp.asarray(x0[list(free)]), jnp.asarray(x0), arrays, model.layout, free,
               max_iter)
    opt, x, sol = jax.tree_util.tree_map(np.asarray, out)
    return np.array(x, dtype=np.float64), opt, sol


def fitted_values(model: NlmeModel, x, sol) -> np.ndarray:
    """Innermost-level fitted values X beta + Z b (original row order)."""
    from .result import blups
    eta = model.X @ np.asarray(sol.beta)
    for term, b in zip(model.terms, blups(model, x, sol)):
        eta = eta + np.sum(term.Z * b[model.level_codes[term.level]], axis=1)
    return eta


def fit_model(model: NlmeModel, x0=None, max_iter: int = 200, tolerance: float = 1e-10,
              max_outer: int = 100):
    """Maximize the likelihood of ``model``; returns an LmeResult or GlsResult."""
    from .result import GlsResult, LmeResult

    t0 = time.perf_counter()
    x = initial_params(model) if x0 is None else np.asarray(x0, np.float64).copy()
    if x.shape != (model.layout.nparams,):
        raise ValueError(f"x0 must have {model.layout.nparams} entries, got {x.shape}")
    resid = model.y - model.X @ np.asarray(model.arrays.beta0)
    check_response(model.y, resid @ resid, model.response)
    free = free_indices(model)
    arrays, outer = model.arrays, 0
    if model.bvar.uses_fitted:
        # nlme's alternation: the covariate is the fitted values of the previous
        # fit (least squares to start); the final estimates are reported with the
        # covariate they were fitted with.
        arrays = model.with_covariate(model.X @ np.asarray(arrays.beta0))
        for outer in range(1, max_outer + 1):
            x_old = x
            x, opt, sol = _optimize(model, arrays, x_old, free, max_iter)
            change = np.max(np.abs(x - x_old) / np.where(x == 0, 1.0, np.abs(x)))
            if change < tolerance:
                break
            arrays = model.with_covariate(fitted_values(model, x, sol))
        else:
            warnings.warn(f"fitted-value variance weights did not converge in {max_outer} "
                          "iterations", ConvergenceWarning, stacklevel=3)
    else:
        x, opt, sol = _optimize(model, arrays, x, free, max_iter)
    x[:model.layout.ntheta] = lik.rectify(x[:model.layout.ntheta], model.layout.k)
    elapsed = time.perf_counter() - t0
    cls = LmeResult if model.kind == "lme" else GlsResult
    result = cls(model, x=x, solution=sol, arrays=arrays, opt=opt, x0=initial_params(model)
                 if x0 is None else np.asarray(x0), outer_iterations=outer, elapsed=elapsed)
    if not result.converged:
        warnings.warn(f"the optimizer did not converge ({result.optinfo['message']})",
                      ConvergenceWarning, stacklevel=3)
    return result


def lme(fixed: str, data, random=None, weights=None, correlation=None, method: str = "REML",
        max_iter: int = 200):
    """Linear mixed-effects model with nlme's variance and correlation structures.

    ``fixed``: ``"distance ~ age + Sex"``; ``random``: ``"~ 1 | Subject"``,
    ``"~ age | Subject"``, ``"~ 1 | a/b"``, lme4's ``"(1 | a/b)"`` or a dict
    ``{"a": "~ 1", "b": "~ age"}`` (outermost first); ``weights``: a variance
    function (``VarIdent``, ``VarPower``, ``VarExp``, ``VarFixed``; a formula string
    means ``VarFixed``); ``correlation``: ``CorAR1``, ``CorCAR1``, ``CorCompSymm``,
    ``CorSymm`` within the innermost random-effects groups; ``method``: "REML"
    or "ML".  As nlme's ``lme`` (Pinheiro & Bates 2000, chapters 2 and 5).

    >>> import mixedjax
    >>> m = mixedjax.lme("distance ~ age", mixedjax.datasets.load("orthodont"),
    ...                  random="~ 1 | Subject")
    >>> round(m.loglik, 4)
    -223.5013
    """
    if random is None:
        raise ValueError("lme needs the random effects, e.g. random='~ 1 | Subject' "
                         "(use gls for a model without random effects)")
    model = build_model("lme", fixed, data, random=random, weights=weights,
                        correlation=correlation, method=method)
    return fit_model(model, max_iter=max_iter)


def gls(model: str, data, weights=None, correlation=None, method: str = "REML",
        max_iter: int = 200):
    """Generalized least squares with nlme's variance and correlation structures.

    As nlme's ``gls`` (Pinheiro & Bates 2000, section 5.4): ``model`` a formula
    ``"y ~ x"``; the correlation structure's groups (``"~ 1 | g"``) form the
    blocks; without one, every observation is its own block.
    """
    built = build_model("gls", model, data, weights=weights, correlation=correlation,
                        method=method)
    return fit_model(built, max_iter=max_iter)
