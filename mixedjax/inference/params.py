"""The variance parameters on lme4's reporting scale: standard deviations and
correlations of each random-effects term, then the residual standard deviation.

lme4's ``confint(m, oldNames = FALSE)`` and ``bootMer`` name them
``sd_<col>|<group>``, ``cor_<row>.<col>|<group>`` and ``sigma``, in the order of
theta within each term (column-major lower triangle).  With
Sigma_t = sigma^2 Lambda_t Lambda_t' (Bates et al. 2015, JSS 67(1), eq. 4):
sd_i = sqrt(Sigma_t[i, i]) and cor_ij = Sigma_t[i, j] / (sd_i sd_j).
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ..structure import Structure, lambdas, tril_indices

__all__ = ["sdcor_names", "parameter_names", "theta_to_sdcor", "sdcor_values"]


def sdcor_names(terms) -> list[str]:
    """lme4's names of the sd/cor parameters of ``terms`` (design order), then ``sigma``.

    A grouping factor that carries several terms (``(1|g) + (0 + x|g)``) gets the
    suffixes ``.1``, ``.2`` on its later terms, as R's ``VarCorr`` names them.
    """
    names: list[str] = []
    seen: dict[str, int] = {}
    for t in terms:
        count = seen.get(t.group_name, 0)
        seen[t.group_name] = count + 1
        grp = t.group_name if count == 0 else f"{t.group_name}.{count}"
        rows, cols = tril_indices(t.k)
        for r, c in zip(rows, cols):
            if r == c:
                names.append(f"sd_{t.cnames[r]}|{grp}")
            else:
                names.append(f"cor_{t.cnames[r]}.{t.cnames[c]}|{grp}")
    names.append("sigma")
    return names


def parameter_names(result) -> list[str]:
    """All parameters of a fit in lme4's ``confint`` order: sd/cor, sigma, fixed effects."""
    return sdcor_names(result.model.design.terms) + list(result.fixef.index)


def theta_to_sdcor(theta, sigma, structure: Structure):
    """(theta, sigma) -> vector of sds and correlations per term, then sigma.

    Pure jnp, so it vmaps over bootstrap replicates.  A zero standard deviation
    gives a NaN correlation, as lme4 reports it.
    """
    out = []
    for lam in lambdas(jnp.asarray(theta, jnp.float64), structure, jnp):
        cov = sigma ** 2 * lam @ lam.T
        sd = jnp.sqrt(jnp.diagonal(cov))
        rows, cols = tril_indices(lam.shape[0])
        for r, c in zip(rows, cols):
            if r == c:
                out.append(sd[r])
            else:
                denom = sd[r] * sd[c]
                out.append(jnp.where(denom > 0, cov[r, c] / jnp.where(denom > 0, denom, 1.0),
                                     jnp.nan))
    out.append(jnp.asarray(sigma, jnp.float64))
    return jnp.stack(out)


def sdcor_values(result) -> np.ndarray:
    """The sd/cor/sigma vector of a fit (numpy; nothing to compile)."""
    from ..simulate import sdcor_matrix

    return sdcor_matrix(np.asarray(result.theta, np.float64)[None],
                        np.asarray([result.sigma], np.float64), result.model.structure)[0]
