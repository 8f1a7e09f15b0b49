"""The fit as a differentiable function of the data: ``y, X, w -> estimates``.

:func:`fit_fn` fixes the random-effects structure of a model (grouping codes and
the random-effects model matrix Z) and returns a :class:`FitFunction`, a pure JAX
function of the response ``y``, the fixed-effects matrix ``X`` and the prior
weights ``w``::

    f = mixedjax.fit_fn("Reaction ~ Days + (Days | Subject)", sleepstudy)
    f(y).beta                                # refit for a new response
    jax.jacrev(lambda y: f(y).beta)(y)       # d beta-hat / d y
    jax.vmap(f)(Y)                           # one fit per row of Y

Derivatives come from the implicit function theorem, not from differentiating
the optimizer's iterations.  The optimum theta*(A) of the profiled criterion
d(theta, A) (Bates et al. 2015, JSS 67(1), eqs. 35 and 42), where A are the
cross-products of [Z X y] (:class:`~mixedjax.crossprod.Blocks`), satisfies
grad_theta d(theta*, A) = 0, so

    d theta* = -H^-1 (d/dA grad_theta d)(theta*, A) . dA,   H = hess_theta d(theta*, A).

This tangent rule is linear in dA, so it serves forward mode (``jax.jvp``,
``jax.jacfwd``) and, by transposition, reverse mode (``jax.grad``,
``jax.jacrev``).  beta, sigma, the criterion and vcov(beta) are explicit
functions of (theta, A) (:func:`mixedjax.factor.solve`), differentiated by the chain
rule.  A, in turn, is rebuilt from (y, X, w) by :meth:`FitFunction.arrays`, a jnp
function over the fixed index structure, so the whole map is differentiable.

Singular fits.  When a column of a term's Lambda is zero at the optimum (a
variance estimated as zero, as for Dyestuff2, or a rank-deficient covariance
factor), the criterion is even in that column (it depends on Lambda only through
Lambda Lambda'), so its gradient with respect to the column vanishes for every
data set and the estimate stays at zero under small perturbations of the data.
Convention: the derivative of a zero diagonal element of theta (and of the
zero elements of its column) is exactly 0, and the derivatives of every other
quantity are computed with it held at zero (the Hessian is restricted to the
free elements).  An element counts as zero when |theta_j| <= ``zero_tol``
(default 1e-8; Newton drives a zero element to round-off level).  At a
degenerate point where the curvature in that direction also vanishes the
estimate is not differentiable and the convention is a choice; a perturbation
large enough to move a variance off zero is not first-order and is only seen by
a refit.

Prior weights.  ``w_i = 0`` removes row i: its cross-products vanish, it is not
counted in n and it adds nothing to sum(log w).  This is how leave-out refits are
computed (:mod:`mixedjax.influence`); weights must not be negative.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import factor
from .backend import jax_backend
from .compiled import newton
from .criterion import from_factor, objective
from .crossprod import Blocks, Rows, basis, design_blocks, response_map, with_response
from .model import LMM
from .structure import Structure, rectify_theta, tril_indices

__all__ = ["fit_fn", "FitParams", "FitFunction", "Layout", "rebuild_arrays", "ift_matrices",
           "ift_tangent", "ZERO_TOL"]

ZERO_TOL = 1e-8


class FitParams(NamedTuple):
    """Estimates of one fit; every leaf is a float array, so a whole ``FitParams``
    can be differentiated.

    ``beta`` (p,), ``theta`` (lme4's layout), ``sigma``, ``objective`` (REML
    criterion or deviance), ``vcov`` = sigma^2 (R_X'R_X)^-1 (p, p), and
    ``converged`` (1.0 when the Newton decrement at theta is below 1e-6, else 0.0;
    its derivative is zero).
    """

    beta: jax.Array
    theta: jax.Array
    sigma: jax.Array
    objective: jax.Array
    vcov: jax.Array
    converged: jax.Array


class Layout(NamedTuple):
    """The fixed index structure of a design (arrays only, so it is a pytree): its
    :class:`~mixedjax.crossprod.Rows` and ``offset`` (n,)."""

    rows: Rows
    offset: jax.Array


def make_layout(model: LMM) -> Layout:
    """The :class:`Layout` of a model, on JAX's device."""
    d = model.design
    offset = np.zeros(d.n) if d.offset is None else np.asarray(d.offset, np.float64)
    return jax.tree_util.tree_map(lambda a: jax.device_put(np.asarray(a)),
                                  Layout(rows=model.rows, offset=offset))


def sqrt_weights(w):
    """sqrt(w), 0 where w = 0, with a finite derivative there (JAX)."""
    # sqrt only where w > 0: the inner where keeps the derivative finite at w = 0.
    pos = w > 0
    return jnp.where(pos, jnp.sqrt(jnp.where(pos, w, 1.0)), 0.0)


def rebuild_arrays(L: Layout, template: Blocks, y, X, w) -> Blocks:
    """The :class:`~mixedjax.crossprod.Blocks` of (y, X, w) for the design of ``L``.

    The same cross-products as :func:`mixedjax.crossprod.build` (the same
    :func:`~mixedjax.crossprod.design_blocks`, rows weighted by w, X through its
    QR basis, y less the offset), in jnp over the fixed index structure, so that
    they are differentiable in y, X and w and batch under ``vmap``.  Index fields
    (coupling entries and pairs) come from ``template``.
    """
    be = jax_backend()
    s = template.structure
    sw = sqrt_weights(w)
    q, rx = basis(X * sw[:, None], jnp)
    parts = design_blocks(L.rows, sw, q, s, template.ent_a.shape[0], be)
    pos = w > 0
    ldw = jnp.sum(jnp.where(pos, jnp.log(jnp.where(pos, w, 1.0)), 0.0))
    A = template.replace(n=jnp.sum(pos).astype(jnp.float64), ldw=ldw, rx=rx,
                         logdet_x=2.0 * jnp.sum(jnp.log(jnp.diagonal(rx))), **parts)
    return with_response(A, response_map(L.rows, q, s, sw, L.offset), y, be)


# ----------------------------------------------------------------------------------
# theta* as a function of the arrays, with its implicit-function-theorem JVP
# ----------------------------------------------------------------------------------
def _column_diagonals(structure: Structure) -> np.ndarray:
    """For each theta element, the index of the diagonal element of its lambda column."""
    out, start = [], 0
    for k in structure.k:
        rows, cols = tril_indices(k)
        diag_of_col = {c: start + i for i, (r, c) in enumerate(zip(rows, cols)) if r == c}
        out.extend(diag_of_col[c] for c in cols)
        start += len(rows)
    return np.asarray(out, dtype=np.int64)


def free_mask(theta, structure: Structure, zero_tol: float = ZERO_TOL):
    """True for theta elements that move with the data.

    Held (False): a diagonal element with |theta| <= zero_tol, and the other
    elements of its lambda column when they are zero too (a zero column).
    """
    zero = jnp.abs(theta) <= zero_tol
    return ~(zero & zero[jnp.asarray(_column_diagonals(structure))])


def masked_solve(H, g, mask):
    """H^-1 g over the free elements (``mask``), 0 for the held ones.

    Held rows and columns are replaced by the identity, so the held elements keep
    a zero step and do not enter the free elements' solution.
    """
    keep = mask[:, None] & mask[None, :]
    Hm = jnp.where(keep, H, jnp.eye(H.shape[0], dtype=H.dtype))
    return jnp.where(mask, jnp.linalg.solve(Hm, jnp.where(mask, g, 0.0)), 0.0)


# Each piece is compiled on its own, so that the Newton loop (the costliest
# program to compile) is shared by plain calls, jvp, jacrev and finite-difference
# refits instead of being recompiled inside every transformed program.
@functools.partial(jax.jit, static_argnames=("reml", "max_iter", "zero_tol"))
def _newton(theta0, A, reml, max_iter, zero_tol):
    opt = newton(objective, theta0, A, reml, max_iter=max_iter)
    # One plain Newton step with the gradient and Hessian already evaluated at opt.x
    # takes the gradient to round-off level (~1e-11), which the implicit-function
    # derivative and finite differences of refits rely on.
    step = masked_solve(opt.hess, opt.grad, free_mask(opt.x, A.structure, zero_tol))
    small = jnp.linalg.norm(step) <= 1e-4 * (1.0 + jnp.linalg.norm(opt.x))
    polish = opt.converged & small & jnp.all(jnp.isfinite(step))
    x = jnp.where(polish, opt.x - step, opt.x)
    return rectify_theta(x, A.structure, jnp), opt.converged.astype(jnp.float64)


# Index fields carry no derivative.
_FLOAT_FIELDS = tuple(f for f in Blocks.fields if f not in Blocks.index_fields)


def float_fields(A: Blocks) -> dict:
    """The float fields of ``A`` as a dict (the ones that carry derivatives)."""
    return {f: getattr(A, f) for f in _FLOAT_FIELDS}


@functools.partial(jax.jit, static_argnums=2)
def ift_matrices(theta, A: Blocks, reml: bool):
    """H = d2 d / dtheta2 and C = d2 d / dtheta dA (per float field of A, shape
    field.shape + (ntheta,)) at (theta, A).

    One forward-over-reverse pass (as jax.hessian) gives both, so a derivative of
    theta* in any mode (jvp, vjp, batched) reuses this one compiled program and
    the tangent map dA -> -H^-1 C . dA is a plain contraction.
    """
    def grads(t):
        return jax.grad(lambda tt, fl: objective(tt, A.replace(**fl), reml),
                        argnums=(0, 1))(t, float_fields(A))
    return jax.jacfwd(grads)(theta)


@jax.jit
def ift_tangent(H, C, mask, dfloats):
    """d theta* = -H^-1 (C . dA) over the free elements, for the float-field
    tangents ``dfloats`` of A (linear in them)."""
    dg = sum(jnp.tensordot(dfloats[f], C[f], axes=dfloats[f].ndim) for f in _FLOAT_FIELDS)
    return -masked_solve(H, dg, mask)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3, 4))
def optimum(theta0, A: Blocks, reml: bool, max_iter: int, zero_tol: float):
    """(theta*, converged) minimizing the profiled criterion for the blocks ``A``.

    The primal is the damped Newton iteration of :mod:`mixedjax.optim` from
    ``theta0`` (rectified to lme4's signs); the derivative with respect to ``A`` is
    the implicit-function-theorem rule of the module docstring (``theta0`` only
    chooses the starting point and gets no derivative).
    """
    return _newton(theta0, A, reml, max_iter, zero_tol)


@optimum.defjvp
def _optimum_jvp(reml, max_iter, zero_tol, primals, tangents):
    theta0, A = primals
    _, dA = tangents
    theta, conv = optimum(theta0, A, reml, max_iter, zero_tol)
    H, C = ift_matrices(theta, A, reml)
    dtheta = ift_tangent(H, C, free_mask(theta, A.structure, zero_tol), float_fields(dA))
    return (theta, conv), (dtheta, jnp.zeros_like(conv))


def params_at(theta, A: Blocks, reml: bool, p: int, converged=1.0) -> FitParams:
    """:class:`FitParams` at ``theta`` for the blocks ``A``."""
    from .batchfit import summary_at
    be = jax_backend()
    F = factor.factorize(theta, A, be)
    sol = factor.solve(F, A, be)
    sigma, _ = summary_at(sol, A, reml)
    Li = be.tri_inv(jnp.tril(sol.rxx))
    return FitParams(beta=sol.beta[:p], theta=theta, sigma=sigma,
                     objective=from_factor(F, A, reml, be),
                     vcov=sigma ** 2 * factor.back_vcov(A.rx, Li.T @ Li, be),
                     converged=jnp.asarray(converged, jnp.float64))


_rebuild = jax.jit(rebuild_arrays)
_params = jax.jit(params_at, static_argnums=(2, 3))


def fit(L: Layout, template, theta0, y, X, w, reml: bool, p: int, max_iter: int = 100,
        zero_tol: float = ZERO_TOL) -> FitParams:
    """Fit (y, X, w) for the design of ``L``; differentiable by the IFT rule."""
    A = _rebuild(L, template, y, X, w)
    theta, conv = optimum(theta0, A, reml, max_iter, zero_tol)
    return _params(theta, A, reml, p, conv)


# ----------------------------------------------------------------------------------
# The public function object
# ----------------------------------------------------------------------------------
class FitFunction:
    """``f(y, X=None, weights=None) -> FitParams``: the fit as a pure JAX function.

    ``X`` defaults to the model's fixed-effects matrix and ``weights`` to its prior
    weights (ones without); a weight of 0 removes its row.  Works under
    ``jax.jit``, ``jax.vmap``, ``jax.jvp``, ``jax.grad``, ``jax.jacfwd`` and
    ``jax.jacrev``.  Shapes are always checked; weights are checked for negative
    or non-finite values only when they are concrete (not inside a transformation).
    Attributes: ``model``, ``reml``, ``theta0`` (the Newton starting point),
    ``layout``, ``template`` (the model's arrays), ``n``, ``p``, ``coef_names``,
    ``theta_names``.
    """

    def __init__(self, model: LMM, reml: bool, theta0, max_iter: int = 100,
                 zero_tol: float = ZERO_TOL):
        d = model.design
        self.model = model
        self.reml = bool(reml)
        self.n, self.p = d.n, d.p
        self.coef_names = list(d.xnames)
        self.theta_names = model.theta_names
        self.template = model.arrays
        self.layout = make_layout(model)
        self.theta0 = jnp.asarray(theta0, jnp.float64)
        self.max_iter = int(max_iter)
        self.zero_tol = float(zero_tol)
        self._X = jnp.asarray(d.X, jnp.float64)
        self._w = jnp.asarray(np.ones(d.n) if d.weights is None else d.weights, jnp.float64)

    def __call__(self, y, X=None, weights=None) -> FitParams:
        y, X, w = self._inputs(y, X, weights)
        return fit(self.layout, self.template, self.theta0, y, X, w, self.reml, self.p,
                   self.max_iter, self.zero_tol)

    def at_theta(self, theta, y, X=None, weights=None) -> FitParams:
        """Estimates with theta held at ``theta`` (no optimization): the GLS fit for
        fixed relative covariance factors."""
        y, X, w = self._inputs(y, X, weights)
        theta = _as_float(theta, "theta")
        if theta.shape != (len(self.theta_names),):
            raise ValueError(f"theta must have {len(self.theta_names)} entries "
                             f"({self.theta_names}), got shape {theta.shape}")
        return _params(theta, _rebuild(self.layout, self.template, y, X, w), self.reml, self.p)

    def arrays(self, y, X=None, weights=None) -> Blocks:
        """The :class:`~mixedjax.crossprod.Blocks` of (y, X, weights) (see
        :func:`rebuild_arrays`)."""
        y, X, w = self._inputs(y, X, weights)
        return _rebuild(self.layout, self.template, y, X, w)

    def _inputs(self, y, X, weights):
        y = _as_float(y, "y")
        if y.shape != (self.n,):
            raise ValueError(f"y must be a vector of length n = {self.n}, got shape {y.shape}")
        if X is None:
            X = self._X
        else:
            X = _as_float(X, "X")
            if X.shape != (self.n, self.p):
                raise ValueError(f"X must have shape (n, p) = ({self.n}, {self.p}) "
                                 f"(columns {self.coef_names}), got {X.shape}")
        if weights is None:
            return y, X, self._w
        w = _as_float(weights, "weights")
        if w.shape != (self.n,):
            raise ValueError(f"weights must be a vector of length n = {self.n}, "
                             f"got shape {w.shape}")
        if not isinstance(w, jax.core.Tracer):
            wn = np.asarray(w)
            if not np.all(np.isfinite(wn)) or np.any(wn < 0):
                raise ValueError("weights must be finite and non-negative "
                                 "(a weight of 0 removes the row)")
        return y, X, w

    def __repr__(self) -> str:
        return (f"FitFunction({self.model.design.formula.formula!r}, n={self.n}, "
                f"p={self.p}, reml={self.reml})")


def _as_float(value, name: str):
    if isinstance(value, jax.core.Tracer):
        return value
    try:
        arr = np.asarray(value)
    except Exception:  # noqa: BLE001 - anything not array-like
        arr = None
    if arr is None or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got {type(value).__name__}")
    return jnp.asarray(arr, jnp.float64)


def fit_fn(model, data=None, reml: bool | None = None, *, theta0=None, max_iter: int = 100,
           zero_tol: float = ZERO_TOL, **model_kw) -> FitFunction:
    """The fit of a fixed design as a differentiable function of (y, X, weights).

    ``model``: an lme4 formula (with ``data``; ``weights=``/``offset=`` go to
    :meth:`LMM.from_formula`), an :class:`~mixedjax.model.LMM`, or a fitted
    :class:`~mixedjax.result.LMMResult` (whose theta becomes the starting point).
    ``reml`` defaults to True for a formula and to the model's setting otherwise.
    ``theta0``: Newton's starting point (default: the fit's theta, else lme4's
    start); ``max_iter``: Newton's iteration cap; ``zero_tol``: the threshold
    below which a diagonal element of theta counts as zero (singular-fit
    convention).  Returns a :class:`FitFunction`; see the module docstring for
    the implicit-function-theorem derivatives.
    """
    from .result import LMMResult

    if isinstance(model, str):
        if data is None:
            raise ValueError("fit_fn(formula, data): data is required with a formula")
        model = LMM.from_formula(model, data, reml=True if reml is None else reml, **model_kw)
    elif data is not None or model_kw:
        raise ValueError("data and model options are only accepted with a formula")
    start = None
    if isinstance(model, LMMResult):
        start = model.theta
        model = model.model
    if not isinstance(model, LMM):
        raise TypeError("fit_fn expects a formula string, an LMM or an LMMResult, got "
                        f"{type(model).__name__}")
    model.require_rows("the fit as a function of the data (fit_fn, influence, hatvalues)")
    reml = model.reml if reml is None else bool(reml)
    if theta0 is None:
        theta0 = model.initial_theta() if start is None else start
    theta0 = np.asarray(theta0, np.float64)
    if theta0.shape != (model.ntheta,):
        raise ValueError(f"theta0 must have {model.ntheta} entries, got shape {theta0.shape}")
    return FitFunction(model, reml, theta0, max_iter=max_iter, zero_tol=zero_tol)
