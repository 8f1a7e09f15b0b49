"""nlme's lme and gls: residual variance functions and correlation structures.

``lme(fixed, data, random, weights=None, correlation=None, method="REML")`` and
``gls(model, data, weights=None, correlation=None, method="REML")`` fit the models
of R's nlme (Pinheiro & Bates 2000, "Mixed-Effects Models in S and S-PLUS",
chapters 2 and 5) by maximizing a pure JAX likelihood of all covariance
parameters with exact Newton steps.  Variance functions: :class:`VarIdent`,
:class:`VarPower`, :class:`VarExp`, :class:`VarFixed`; correlation structures:
:class:`CorAR1`, :class:`CorCAR1`, :class:`CorCompSymm`, :class:`CorSymm`.
"""

from .corstruct import CorAR1, CorCAR1, CorCompSymm, CorStruct, CorSymm
from .fit import gls, lme
from .result import GlsResult, LmeResult
from .varfunc import VarExp, VarFixed, VarFunc, VarIdent, VarPower

__all__ = ["lme", "gls", "VarIdent", "VarPower", "VarExp", "VarFixed", "VarFunc",
           "CorAR1", "CorCAR1", "CorCompSymm", "CorSymm", "CorStruct", "LmeResult",
           "GlsResult"]
