"""Inverse and log-determinant of a batch of small SPD matrices, in plain JAX.

The blocks of an lme/gls fit are a batch of small m x m matrices.  jaxlib's CPU
LAPACK kernels (0.10) split a batch over the intra-op thread pool and block
until the pieces finish; when the compiled Newton loop runs several such kernels
concurrently on a machine with few cores, every pool thread waits on work queued
behind it and the process deadlocks.  :func:`inv_logdet` uses only ordinary XLA
operations (one loop over the pivots, vectorized over the batch, so the program
size does not grow with m), and its derivative rule is closed form, so
gradients and Hessians never differentiate through the loop.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["inv_logdet", "sweep_inverse"]


def sweep_inverse(A):
    """(A^-1, log|A|) of SPD matrices ``(..., m, m)`` by sweeping every pivot.

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

    Derivatives (Magnus & Neudecker, "Matrix Differential Calculus", ch. 8):
    d(A^-1) = -A^-1 dA A^-1 and d log|A| = tr(A^-1 dA); the rule is applied
    recursively for higher derivatives, so the compiled program stays small and
    stores no loop residuals.
    """
    return sweep_inverse(A)


@inv_logdet.defjvp
def _inv_logdet_jvp(primals, tangents):
    (A,), (dA,) = primals, tangents
    inv, logdet = inv_logdet(A)
    d_inv = -inv @ dA @ inv
    return (inv, logdet), (d_inv, jnp.sum(inv * dA, axis=(-2, -1)))
