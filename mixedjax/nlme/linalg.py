"""Batched Cholesky factorization and triangular solves written in plain JAX.

The blocks of an lme/gls fit are a batch of small m x m matrices.  jaxlib's
CPU LAPACK kernels (0.10) split a batch over the intra-op thread pool and block
until the pieces finish; when the compiled Newton loop runs several such
kernels concurrently on a machine with few cores, every pool thread waits on
work queued behind it and the process deadlocks.  These loops use only
ordinary XLA operations: one column (or row) per step, vectorized over the
batch, so the program size does not grow with m, and jit, grad, hessian and
vmap apply.  Golub & Van Loan, "Matrix Computations", 4th ed., algorithms
4.2.1 (gaxpy Cholesky) and 3.1.1 (forward substitution).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["cholesky", "solve_lower", "solve_upper", "cho_solve", "logdet_from_chol",
           "inv_logdet", "sweep_inverse"]


def cholesky(A):
    """Lower-triangular L with L L' = A for a batch ``(..., m, m)`` of SPD matrices."""
    m = A.shape[-1]
    idx = jnp.arange(m)

    def column(j, L):
        # Row j of L holds the finished entries k < j and zeros elsewhere.
        v = A[..., :, j] - jnp.einsum("...ik,...k->...i", L, L[..., j, :])
        d = jnp.sqrt(v[..., j])[..., None]
        col = jnp.where(idx > j, v / d, jnp.where(idx == j, d, 0.0))
        return L.at[..., :, j].set(col)
    return jax.lax.fori_loop(0, m, column, jnp.zeros_like(A))


def solve_lower(L, B):
    """X = L^-1 B by forward substitution; L ``(..., m, m)``, B ``(..., m, s)``."""
    m = L.shape[-1]

    def row(i, X):
        r = B[..., i, :] - jnp.einsum("...k,...ks->...s", L[..., i, :], X)
        return X.at[..., i, :].set(r / L[..., i, i][..., None])
    return jax.lax.fori_loop(0, m, row, jnp.zeros_like(B))


def solve_upper(L, B):
    """X = L'^-1 B by back substitution (L lower triangular)."""
    m = L.shape[-1]

    def row(t, X):
        i = m - 1 - t
        r = B[..., i, :] - jnp.einsum("...k,...ks->...s", L[..., :, i], X)
        return X.at[..., i, :].set(r / L[..., i, i][..., None])
    return jax.lax.fori_loop(0, m, row, jnp.zeros_like(B))


def cho_solve(L, B):
    """A^-1 B from the Cholesky factor L of A."""
    return solve_upper(L, solve_lower(L, B))


def logdet_from_chol(L):
    """log|A| = 2 sum log diag(L), summed over the batch."""
    return 2.0 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)))


def sweep_inverse(A):
    """(A^-1, log|A|) of SPD matrices by sweeping every pivot (one loop).

    Sweeping pivot k (Goodnight 1979, "A tutorial on the SWEEP operator", Am.
    Stat. 33) maps a_kk -> -1/a_kk, the rest of row and column k -> a/a_kk and the
    other entries a_ij -> a_ij - a_ik a_kj / a_kk; sweeping all pivots of A gives
    -A^-1, and the pivots are the successive Schur-complement diagonals, whose
    logs sum to log|A|.  For SPD A no pivoting is needed (it is Gauss-Jordan
    elimination in the order of a Cholesky factorization).
    """
    m = A.shape[-1]
    idx = jnp.arange(m)

    def pivot(k, carry):
        B, logdet = carry
        d = B[..., k, k][..., None, None]
        col = B[..., :, k][..., :, None]
        row = B[..., k, :][..., None, :]
        in_row = (idx == k)[:, None]
        in_col = (idx == k)[None, :]
        B = jnp.where(in_row & in_col, -1.0 / d,
                      jnp.where(in_row | in_col, B / d, B - col * row / d))
        return B, logdet + jnp.log(d[..., 0, 0])

    B, logdet = jax.lax.fori_loop(0, m, pivot, (A, jnp.zeros(A.shape[:-2], A.dtype)))
    inv = -B
    return 0.5 * (inv + jnp.swapaxes(inv, -1, -2)), logdet


@jax.custom_jvp
def inv_logdet(A):
    """(A^-1, log|A|) for a batch ``(..., m, m)`` of SPD matrices.

    The derivative rule is closed form, d(A^-1) = -A^-1 dA A^-1 and
    d log|A| = tr(A^-1 dA), so gradients and Hessians never differentiate
    through the elimination loop: the compiled program stays small and needs no
    stored loop residuals.
    """
    return sweep_inverse(A)
@inv_logdet.defjvp
def _inv_logdet_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    inv, logdet = inv_logdet(A)
    d_inv = -inv @ dA @ inv
    return (inv, logdet), (d_inv, jnp.sum(inv * dA, axis=(-2, -1)))
