"""mixedjax: linear mixed-effects models (lme4 formulas) fitted with JAX.

Importing mixedjax turns on JAX's float64 mode (results must match lme4 to 1e-6)
and, unless ``MIXEDJAX_COMPILATION_CACHE=0`` is set or a cache directory is
already configured, JAX's persistent compilation cache under
``~/.cache/mixedjax`` (or ``$MIXEDJAX_CACHE_DIR``), so a model structure compiled
once loads from disk in later processes.  It does not import JAX itself: models
are built and fitted eagerly in NumPy, and JAX loads at the first compiled or
traced use (see :mod:`mixedjax._config`).  ``lmer`` fits a Dask DataFrame out of
core (:mod:`mixedjax.outofcore`, which alone imports Dask).
"""

import functools as _functools

from ._config import VERSION as __version__
from ._config import configure_jax as _configure_jax

_configure_jax()

from . import datasets  # noqa: E402
from .design import Design, make_design  # noqa: E402
from .formula import ParsedFormula, RandomTerm, parse_formula  # noqa: E402
from .model import LMM, ConvergenceWarning  # noqa: E402
from .model import lmer as _lmer_in_memory  # noqa: E402
from .result import LMMResult  # noqa: E402
from . import methods as _methods  # noqa: E402,F401  (attaches LMMResult's methods)


@_functools.wraps(_lmer_in_memory)
def lmer(formula, data, *args, **kwargs):
    # A Dask DataFrame goes to the out-of-core fit.  It is recognized by its type's
    # module, so that neither Dask nor mixedjax.outofcore is imported for other data.
    if type(data).__module__.split(".")[0] in ("dask", "dask_expr"):
        from . import outofcore
        return outofcore.lmer(formula, data, *args, **kwargs)
    return _lmer_in_memory(formula, data, *args, **kwargs)


lmer.__module__ = __name__      # pickled by reference as mixedjax.lmer, this function


# Features beyond the core fit load on first use, so ``import mixedjax`` stays fast.
_LAZY = {
    "profiled_objective": ("mixedjax.criterion", "objective"),
    "anova": "mixedjax.inference.lrt",
    "AIC": "mixedjax.inference.compare",
    "BIC": "mixedjax.inference.compare",
    "pb_test": "mixedjax.bootstrap",
    "simulate_design": "mixedjax.simulate",
    "BatchResult": "mixedjax.simulate",
    "power": "mixedjax.powersim",
    "power_curve": "mixedjax.powersim",
    "lme": "mixedjax.nlme",
    "gls": "mixedjax.nlme",
    "VarIdent": "mixedjax.nlme",
    "VarPower": "mixedjax.nlme",
    "VarExp": "mixedjax.nlme",
    "VarFixed": "mixedjax.nlme",
    "CorAR1": "mixedjax.nlme",
    "CorCAR1": "mixedjax.nlme",
    "CorCompSymm": "mixedjax.nlme",
    "CorSymm": "mixedjax.nlme",
    "fit_fn": "mixedjax.fitfn",
    "FitParams": "mixedjax.fitfn",
    "load": "mixedjax.persist",
}


def __getattr__(name):
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'mixedjax' has no attribute {name!r}")
    module, attr = target if isinstance(target, tuple) else (target, name)
    import importlib
    return getattr(importlib.import_module(module), attr)


def __dir__():
    return sorted(set(globals()) | set(_LAZY))

__all__ = [
    "LMM", "LMMResult", "lmer", "ConvergenceWarning", "datasets", "parse_formula",
    "ParsedFormula", "RandomTerm", "make_design", "Design", *_LAZY,
]
