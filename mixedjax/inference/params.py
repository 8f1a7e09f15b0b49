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

__all__ = ["sdcor_names", "parameter_names", "sdcor_matrix", "theta_to_sdcor", "sdcor_values"]


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


def sdcor_matrix(theta, sigma, structure: Structure, xp=np):
    """(theta, sigma) -> standard deviations and correlations per term, then sigma.

    ``theta`` is (..., ntheta) and ``sigma`` (...): leading axes are replicates, so
    one call covers a bootstrap.  ``xp`` is NumPy or ``jax.numpy`` (pure, so it
    differentiates and vmaps).  A zero standard deviation gives a NaN correlation, as
    lme4 reports it.
    """
    sigma = xp.asarray(sigma, dtype=theta.dtype)
    out = []
    for lam in lambdas(theta, structure, xp):
        cov = sigma[..., None, None] ** 2 * (lam @ xp.swapaxes(lam, -1, -2))
        sd = xp.sqrt(xp.diagonal(cov, axis1=-2, axis2=-1))
        rows, cols = tril_indices(lam.shape[-1])
        for r, c in zip(rows, cols):
            if r == c:
                out.append(sd[..., r])
            else:
                denom = sd[..., r] * sd[..., c]
                safe = xp.where(denom > 0, denom, 1.0)
                out.append(xp.where(denom > 0, cov[..., r, c] / safe, np.nan))
    out.append(sigma)
    return xp.stack(out, axis=-1)


def theta_to_sdcor(theta, sigma, structure: Structure):
    """:func:`sdcor_matrix` of one fit in JAX (differentiable, vmaps)."""
    return sdcor_matrix(jnp.asarray(theta, jnp.float64), jnp.asarray(sigma, jnp.float64),
                        structure, jnp)


def sdcor_values(result) -> np.ndarray:
    """The sd/cor/sigma vector of a fit (NumPy; nothing to compile)."""
    return sdcor_matrix(np.asarray(result.theta, np.float64), np.float64(result.sigma),
                        result.model.structure)
