"""The methods of :class:`~mixedjax.result.LMMResult` that the layers above the fit
compute: small-sample inference, intervals, likelihood-ratio tests, simulation and
bootstrap, influence, and the lme4-style summary.

:mod:`mixedjax.result` sits below those layers and imports none of them (the package
has no import cycle, function-level imports included); this module, imported by
``mixedjax/__init__``, attaches the methods to the class.  Each delegates to its
module on first use, so ``import mixedjax`` loads neither JAX nor SciPy's statistics.
"""

from __future__ import annotations

import pandas as pd

from .result import LMMResult

__all__ = ["METHODS"]


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
    """Fit this design to every row of ``Y`` (nsim x n) in one compiled call."""
    from .simulate import refit_many as impl
    return impl(self, Y, **kwargs)


def bootstrap(self, nsim: int, key=None, **kwargs):
    """Parametric bootstrap, as MixedModels.jl's ``parametricbootstrap``."""
    from .bootstrap import bootstrap as impl
    return impl(self, nsim=nsim, key=key, **kwargs)


def influence(self, groups=None, exact: bool = False, **kwargs):
    """Leverage, Cook's distance and DFBETAS by observation or by group."""
    from .influence import influence as impl
    return impl(self, groups=groups, exact=exact, **kwargs)


def summary(self, ddf: str | None = None):
    """lme4-style summary; ``ddf`` ("Satterthwaite", "Kenward-Roger", ...) adds df
    and p-values to the fixed-effects table as lmerTest's summary does.  Returns a
    :class:`mixedjax.summary.Summary`."""
    from .summary import Summary as impl
    return impl(self, ddf=ddf)


def __repr__(self) -> str:
    return self.summary().text(correlation=False)


def _repr_html_(self) -> str:
    return self.summary()._repr_html_()


METHODS = {f.__name__: f for f in (
    coef_table, anova, test_contrast, emmeans, ranova, confint, predict_interval,
    simulate, refit_many, bootstrap, influence, summary, __repr__, _repr_html_)}

for _name, _method in METHODS.items():
    _method.__qualname__ = f"LMMResult.{_name}"
    setattr(LMMResult, _name, _method)
