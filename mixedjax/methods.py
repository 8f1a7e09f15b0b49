"""The methods of :class:`~mixedjax.result.LMMResult` that the layers above the fit
compute: small-sample inference, intervals, likelihood-ratio tests, simulation and
bootstrap, influence, R² and ICC, per-level coefficients, broom-style tables, and the
lme4-style summary.

:mod:`mixedjax.result` sits below those layers and imports none of them (the package
has no import cycle, function-level imports included); this module, imported by
``mixedjax/__init__``, attaches the methods to the class.  Each delegates to its
module on first use, so ``import mixedjax`` loads neither JAX nor SciPy's statistics.
"""

from __future__ import annotations

import pandas as pd

from .result import LMMResult

__all__ = ["METHODS", "PROPERTIES"]


def coef_table(self, ddf: str | None = "Satterthwaite") -> pd.DataFrame:
    """Fixed-effects table with small-sample df (see :mod:`mixedjax.inference.tables`)."""
    from .inference.tables import coef_table as impl
    return impl(self, ddf=ddf)


def anova(self, type: int = 3, ddf: str = "Satterthwaite") -> pd.DataFrame:
    """F tests per fixed-effects term, as lmerTest's ``anova``."""
    from .inference.tables import anova_table as impl
    return impl(self, type=type, ddf=ddf)


def test_contrast(self, L, ddf: str = "Satterthwaite", rhs=None) -> pd.DataFrame:
    """F (or t) test of ``L beta = rhs`` for a contrast matrix ``L``."""
    from .inference.tables import test_contrast as impl
    return impl(self, L, ddf=ddf, rhs=rhs)


def emmeans(self, specs, by=None, ddf: str = "Satterthwaite", adjust: str = "tukey",
            level: float = 0.95):
    """Estimated marginal means and pairwise contrasts, as R's emmeans."""
    from .inference.emmeans import emmeans as impl
    return impl(self, specs, by=by, ddf=ddf, adjust=adjust, level=level)


def ranova(self) -> pd.DataFrame:
    """Likelihood-ratio test of each random-effects term, as lmerTest's ``ranova``."""
    from .inference.lrt import ranova as impl
    return impl(self)


def confint(self, method: str = "profile", level: float = 0.95, **kwargs) -> pd.DataFrame:
    """Confidence intervals for every parameter, named as lme4's ``confint``."""
    from .inference.confint import confint as impl
    return impl(self, method=method, level=level, **kwargs)


def predict_interval(self, newdata: pd.DataFrame | None = None, level: float = 0.95,
                     re_form=None, include_residual: bool = True,
                     include_re_variance: bool = True,
                     allow_new_levels: bool = False) -> pd.DataFrame:
    """Prediction intervals (``fit``, ``se``, ``lwr``, ``upr``) from the exact joint
    error of beta-hat and the BLUPs (see :mod:`mixedjax.inference.prediction`)."""
    from .inference.prediction import predict_interval as impl
    return impl(self, newdata=newdata, level=level, re_form=re_form,
                include_residual=include_residual, include_re_variance=include_re_variance,
                allow_new_levels=allow_new_levels)


def simulate(self, nsim: int = 1, key=None, params=None, **kwargs):
    """Responses drawn from the fitted model, as lme4's ``simulate``."""
    from .simulate import simulate as impl
    return impl(self, nsim=nsim, key=key, params=params, **kwargs)


def refit_many(self, Y, **kwargs):
    """Fit this design to every row of ``Y`` (nsim x n) in one compiled call (or over
    the workers of ``executor=``; see :func:`mixedjax.simulate.refit_many`)."""
    from .simulate import refit_many as impl
    return impl(self, Y, **kwargs)


def bootstrap(self, nsim: int, key=None, **kwargs):
    """Parametric bootstrap, as MixedModels.jl's ``parametricbootstrap`` (in this
    process, over the workers of ``executor=``, or a share ``replicates=range(lo, hi)``;
    see :func:`mixedjax.bootstrap.bootstrap`)."""
    from .bootstrap import bootstrap as impl
    return impl(self, nsim=nsim, key=key, **kwargs)


def influence(self, groups=None, exact: bool = False, **kwargs):
    """Leverage, Cook's distance and DFBETAS by observation or by group."""
    from .influence import influence as impl
    return impl(self, groups=groups, exact=exact, **kwargs)


def r2(self, tolerance: float = 1e-5) -> pd.Series:
    """Marginal and conditional R² (Nakagawa & Schielzeth 2013, with Johnson's 2014
    random slopes), as ``performance::r2_nakagawa``: ``R2_conditional``,
    ``R2_marginal`` (see :mod:`mixedjax.inference.variance`)."""
    from .inference.variance import r2_nakagawa as impl
    return impl(self, tolerance=tolerance)


def icc(self, tolerance: float = 1e-5) -> pd.Series:
    """Adjusted and conditional intraclass correlation, as ``performance::icc``:
    ``ICC_adjusted``, ``ICC_conditional`` (see :mod:`mixedjax.inference.variance`)."""
    from .inference.variance import icc as impl
    return impl(self, tolerance=tolerance)


def rePCA(self) -> dict[str, pd.DataFrame]:  # noqa: N802 - lme4's name
    """Principal components of each grouping factor's random effects, as lme4's
    ``summary(rePCA(m))`` (see :func:`mixedjax.inference.effects.rePCA`)."""
    from .inference.effects import rePCA as impl
    return impl(self)


def tidy(self, effects=("fixed", "ran_pars"), scales: str = "sdcor", conf_int: bool = False,
         conf_level: float = 0.95, conf_method: str = "Wald",
         ddf_method: str | None = "Satterthwaite", **kwargs) -> pd.DataFrame:
    """One row per estimate, as broom.mixed's ``tidy(m)`` of an lmerTest fit
    (see :mod:`mixedjax.tidy`)."""
    from .tidy import tidy as impl
    return impl(self, effects=effects, scales=scales, conf_int=conf_int,
                conf_level=conf_level, conf_method=conf_method, ddf_method=ddf_method,
                **kwargs)


def glance(self) -> pd.DataFrame:
    """One row of fit statistics, as broom.mixed's ``glance(m)``."""
    from .tidy import glance as impl
    return impl(self)


def summary(self, ddf: str | None = None):
    """lme4-style summary; ``ddf`` ("Satterthwaite", "Kenward-Roger", ...) adds df
    and p-values to the fixed-effects table as lmerTest's summary does.  Returns a
    :class:`mixedjax.summary.Summary`."""
    from .summary import Summary as impl
    return impl(self, ddf=ddf)


def coef(self) -> dict[str, pd.DataFrame]:
    """Per-level coefficients (fixed effects plus each level's conditional modes), one
    DataFrame per grouping factor, as lme4's ``coef(m)``."""
    from .inference.effects import coef as impl
    return impl(self)


def __repr__(self) -> str:
    return self.summary().text(correlation=False)


def _repr_html_(self) -> str:
    return self.summary()._repr_html_()


METHODS = {f.__name__: f for f in (
    coef_table, anova, test_contrast, emmeans, ranova, confint, predict_interval,
    simulate, refit_many, bootstrap, influence, r2, icc, rePCA, tidy, glance, summary,
    __repr__, _repr_html_)}
# Read as lme4's fixef and ranef are: attributes, not calls.
PROPERTIES = {f.__name__: f for f in (coef,)}

for _name, _method in {**METHODS, **PROPERTIES}.items():
    _method.__qualname__ = f"LMMResult.{_name}"
    setattr(LMMResult, _name, property(_method) if _name in PROPERTIES else _method)
