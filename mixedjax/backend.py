"""How the one criterion runs: the array operations it needs, for NumPy and for JAX.

:mod:`mixedjax.factor` and :mod:`mixedjax.criterion` are written once against a
small namespace ``be``: ``be.xp`` is ``numpy`` or ``jax.numpy`` (the array API
both implement), and the methods below cover what that API lacks or what each
library does best:

* ``segment_sum``: sums of rows by integer label (``numpy.bincount`` /
  ``jax.ops.segment_sum``);
* ``mm``: matrix products batched over levels (``a @ b``); in NumPy a product by
  one shared matrix is a single BLAS call on the stacked rows, and products of
  blocks of at most :data:`mixedjax.routing.UNROLL_PRODUCT` multiply-adds are
  written out entry by entry (NumPy's batched matmul costs about 30 ns a level
  for 2 x 2 blocks, three times the elementwise form);
* ``chol`` and ``tri_inv``: Cholesky factors and inverses of triangular factors,
  batched over leading axes.  Blocks of up to :data:`mixedjax.routing.UNROLL` columns are factored
  by an unrolled loop of elementwise operations in both libraries: NumPy's
  per-call overhead dominates at that size, and in JAX these fuse into a few
  loops under ``vmap`` and never call batched LAPACK (which can hang jaxlib's CPU
  thread pool when several batched calls run at once).  Larger blocks use
  LAPACK: SciPy's in NumPy (NumPy and SciPy bundle separate OpenBLAS thread
  pools, and waking NumPy's between SciPy's LAPACK calls halves their speed).
  In JAX, blocks of up to :data:`mixedjax.routing.LOOP_LIMIT` columns are
  factored by a loop over columns, vectorized over the batch (again no batched
  LAPACK under ``vmap``), and larger ones by ``jax.numpy.linalg``.

:data:`NUMPY` is the eager backend (no JAX import); :func:`jax_backend` the traced
one.  A matrix that is not positive definite gives NaN factors in both (callers
of the NumPy backend silence the floating-point warnings that come with them).
"""

from __future__ import annotations

import functools

import numpy as np

from . import routing

__all__ = ["Backend", "NUMPY", "jax_backend"]


def _chol_unrolled(A, xp):
    """Cholesky factor of a batch (..., k, k) of SPD matrices, entry by entry
    (reads the lower triangle; NaN where a pivot is not positive)."""
    k = A.shape[-1]
    L = [[None] * k for _ in range(k)]
    for j in range(k):
        s = A[..., j, j]
        for t in range(j):
            s = s - L[j][t] * L[j][t]
        d = xp.sqrt(xp.where(s > 0, s, xp.nan))
        L[j][j] = d
        for i in range(j + 1, k):
            s = A[..., i, j]
            for t in range(j):
                s = s - L[i][t] * L[j][t]
            L[i][j] = s / d
    return _assemble(L, A, xp)


def _assemble(T, like, xp):
    """A batch of lower-triangular matrices from their entries (lists of arrays)."""
    k = len(T)
    if k == 0:
        return xp.zeros(like.shape, like.dtype)
    if xp is np:
        out = np.zeros(like.shape)
        for i in range(k):
            for j in range(i + 1):
                out[..., i, j] = T[i][j]
        return out
    zero = xp.zeros_like(like[..., 0, 0])
    return xp.stack([xp.stack([T[i][j] if j <= i else zero for j in range(k)], axis=-1)
                     for i in range(k)], axis=-2)


def _tri_inv_unrolled(L, xp):
    """Inverse of a batch (..., k, k) of lower-triangular matrices, entry by entry."""
    k = L.shape[-1]
    X = [[None] * k for _ in range(k)]
    for j in range(k):
        X[j][j] = 1.0 / L[..., j, j]
        for i in range(j + 1, k):
            s = L[..., i, j] * X[j][j]
            for t in range(j + 1, i):
                s = s + L[..., i, t] * X[t][j]
            X[i][j] = -s / L[..., i, i]
    return _assemble(X, L, xp)


class Backend:
    """The operations of one array library (see the module docstring)."""

    name = "abstract"
    xp = None

    def segment_sum(self, values, ids, num: int):
        raise NotImplementedError

    def mm(self, a, b):
        """a @ b (batched over leading axes)."""
        return a @ b

    def chol(self, A):
        raise NotImplementedError

    def tri_inv(self, L):
        raise NotImplementedError

    def solve_lower(self, L, B, trans: bool = False, Li=None):
        """L^-1 B (or L^-T B with ``trans``) for lower-triangular L, batched over
        leading axes shared by L (..., k, k) and B (..., k, r); ``Li``: L^-1 when
        known."""
        Li = self.tri_inv(L) if Li is None else Li
        return self.mm(self.xp.swapaxes(Li, -1, -2) if trans else Li, B)

    def chol_inverse(self, L, Li=None):
        """(L L')^-1 = L^-T L^-1 for a Cholesky factor L (batched); ``Li``: L^-1
        when known."""
        Li = self.tri_inv(L) if Li is None else Li
        return self.mm(self.xp.swapaxes(Li, -1, -2), Li)

    def symmetrize_lower(self, A):
        """The symmetric matrix whose lower triangle is that of A (batched)."""
        xp = self.xp
        k = A.shape[-1]
        low = np.tril(np.ones((k, k), bool))
        return xp.where(low, A, xp.swapaxes(A, -1, -2))


class _NumpyBackend(Backend):
    name = "numpy"
    xp = np

    def segment_sum(self, values, ids, num: int):
        values = np.asarray(values)
        if values.ndim == 1:
            return np.bincount(ids, values, minlength=num)[:num]
        flat = values.reshape(len(values), -1)
        cols = [np.bincount(ids, flat[:, j], minlength=num)[:num] for j in range(flat.shape[1])]
        # One column (a scalar first term's dense coupling: 22M entries for
        # MovieLens) is reshaped, not copied into a strided array (0.4 s).
        if len(cols) == 1:
            out = cols[0][:, None]
        else:
            out = np.stack(cols, axis=1) if cols else np.zeros((num, 0))
        return out.reshape((num,) + values.shape[1:])

    def mm(self, a, b):
        if a.ndim < 3 and b.ndim < 3 or a.size + b.size < routing.SMALL_PRODUCT:
            return a @ b
        m, k, n = a.shape[-2], a.shape[-1], b.shape[-1]
        if b.ndim == 2:          # one shared right factor: one product of stacked rows
            a = np.ascontiguousarray(a)
            return (a.reshape(-1, k) @ b).reshape(a.shape[:-1] + (n,))
        if 0 < m * k * n <= routing.UNROLL_PRODUCT:
            out = np.empty(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + (m, n))
            for i in range(m):
                for j in range(n):
                    acc = a[..., i, 0] * b[..., 0, j]
                    for r in range(1, k):
                        acc += a[..., i, r] * b[..., r, j]
                    out[..., i, j] = acc
            return out
        return a @ b

    def chol(self, A):
        k = A.shape[-1]
        if k <= routing.UNROLL:
            return _chol_unrolled(A, np)
        if A.ndim == 2:
            import scipy.linalg
            L, info = scipy.linalg.lapack.dpotrf(A, lower=1, clean=1)
            return L if info == 0 else np.full_like(A, np.nan)
        try:
            return np.linalg.cholesky(A)
        except np.linalg.LinAlgError:
            return np.full_like(A, np.nan)

    def tri_inv(self, L):
        k = L.shape[-1]
        if k <= routing.UNROLL:
            return _tri_inv_unrolled(L, np)
        if L.ndim == 2:
            import scipy.linalg
            Li, info = scipy.linalg.lapack.dtrtri(L, lower=1)
            return Li if info == 0 else np.full_like(L, np.nan)
        eye = np.broadcast_to(np.eye(k), L.shape)
        return np.linalg.solve(L, eye)

    def solve_lower(self, L, B, trans: bool = False, Li=None):
        if Li is None and L.ndim == 2 and L.shape[-1] > routing.UNROLL:
            import scipy.linalg
            return scipy.linalg.solve_triangular(L, B, lower=True, trans=1 if trans else 0,
                                                 check_finite=False)
        return super().solve_lower(L, B, trans, Li)

    def chol_inverse(self, L, Li=None):
        if Li is None and L.ndim == 2 and L.shape[-1] > routing.UNROLL:
            import scipy.linalg
            inv, info = scipy.linalg.lapack.dpotri(L, lower=1)
            if info != 0:
                return np.full_like(L, np.nan)
            # Mirror the lower triangle (dpotri leaves the upper one as it was): clear
            # the upper part column by column (contiguous in dpotri's column order),
            # then add the transpose and halve the doubled diagonal.
            for j in range(1, inv.shape[1]):
                inv[:j, j] = 0.0
            inv += inv.T
            inv[np.diag_indices_from(inv)] *= 0.5
            return inv.T            # the same symmetric matrix, in C order
        return super().chol_inverse(L, Li)


class _JaxBackend(Backend):
    name = "jax"

    def __init__(self):
        import jax
        import jax.numpy as jnp
        self.jax = jax
        self.xp = jnp

    def segment_sum(self, values, ids, num: int):
        return self.jax.ops.segment_sum(values, ids, num_segments=num)

    def chol(self, A):
        if A.shape[-1] <= routing.UNROLL:
            return _chol_unrolled(A, self.xp)
        if A.shape[-1] <= routing.LOOP_LIMIT:
            return self._chol_loop(A)
        return self.xp.linalg.cholesky(A)

    def _chol_loop(self, A):
        """Cholesky factor by a loop over columns (left-looking; Golub & Van Loan,
        Matrix Computations, alg. 4.2.1), each step vectorized over the batch: no
        LAPACK call, so ``vmap`` never batches one (module docstring)."""
        jnp, lax = self.xp, self.jax.lax
        k = A.shape[-1]
        rows = jnp.arange(k)

        def column(j, L):
            Lj = lax.dynamic_index_in_dim(L, j, axis=-2, keepdims=False)      # row j
            v = lax.dynamic_index_in_dim(A, j, axis=-1, keepdims=False) - (L @ Lj[..., None])[..., 0]
            vjj = lax.dynamic_index_in_dim(v, j, axis=-1, keepdims=False)
            d = jnp.sqrt(jnp.where(vjj > 0, vjj, jnp.nan))
            col = jnp.where(rows > j, v / d[..., None], jnp.where(rows == j, d[..., None], 0.0))
            return lax.dynamic_update_index_in_dim(L, col, j, axis=-1)

        return lax.fori_loop(0, k, column, jnp.zeros_like(A))

    def _tri_inv_loop(self, L):
        """Inverse of lower-triangular L by forward substitution row by row, each
        step vectorized over the batch (no LAPACK call)."""
        jnp, lax = self.xp, self.jax.lax
        k = L.shape[-1]
        eye = jnp.eye(k, dtype=L.dtype)

        def row(i, X):
            Li = lax.dynamic_index_in_dim(L, i, axis=-2, keepdims=False)     # (..., k)
            lii = lax.dynamic_index_in_dim(Li, i, axis=-1, keepdims=False)
            r = (eye[i] - (Li[..., None, :] @ X)[..., 0, :]) / lii[..., None]
            return lax.dynamic_update_index_in_dim(X, r, i, axis=-2)

        return lax.fori_loop(0, k, row, jnp.zeros_like(L))

    def tri_inv(self, L):
        k = L.shape[-1]
        if k <= routing.UNROLL:
            return _tri_inv_unrolled(L, self.xp)
        if k <= routing.LOOP_LIMIT:
            return self._tri_inv_loop(L)
        eye = self.xp.broadcast_to(self.xp.eye(k, dtype=L.dtype), L.shape)
        return self.jax.scipy.linalg.solve_triangular(L, eye, lower=True)

    def solve_lower(self, L, B, trans: bool = False, Li=None):
        if Li is not None or L.shape[-1] <= routing.LOOP_LIMIT:
            return super().solve_lower(L, B, trans, Li)
        return self.jax.scipy.linalg.solve_triangular(L, B, lower=True, trans=1 if trans else 0)


NUMPY = _NumpyBackend()


@functools.cache
def jax_backend() -> Backend:
    """The JAX backend (imports JAX on first use)."""
    return _JaxBackend()
