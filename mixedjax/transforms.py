"""Stateful transforms that formulas may call with R's meaning.

patsy's ``scale`` is its ``standardize``, which divides by the standard deviation
with denominator n; R's ``scale`` divides by ``sd`` (denominator n - 1), and
without centring by the root mean square sqrt(sum x^2 / (n - 1)) (R's
``?scale``).  A coefficient of ``scale(x)`` must equal lme4's, so formulas get
:func:`r_scale` under the name ``scale``.  Like every stateful transform, it keeps
the mean and spread of the data it was fitted on and applies them to new data.
"""

from __future__ import annotations

import numpy as np
import patsy
from patsy.state import Standardize

__all__ = ["RScale", "r_scale"]


class RScale(Standardize):
    """``scale(x, center=True, scale=True)`` as R computes it (see the module
    docstring); the running mean and sum of squares are patsy's."""

    def memorize_chunk(self, x, center=True, scale=True):
        super().memorize_chunk(x)

    def transform(self, x, center=True, scale=True):
        x = np.array(x, dtype=np.float64)       # a copy: patsy may pass a view
        n = self.current_n
        if n < 2 and scale:
            raise ValueError("scale() needs at least two observations")
        mean = self.current_mean
        if x.ndim == 1:
            mean = mean[0]
        if center:
            x = x - mean
        if scale:
            ss = self.current_M2 if center else self.current_M2 + n * self.current_mean ** 2
            sd = np.sqrt(ss / (n - 1))
            x = x / (sd[0] if x.ndim == 1 else sd)
        return x


r_scale = patsy.stateful_transform(RScale)
