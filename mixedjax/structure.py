"""The model's shape: terms, theta's layout, and the typed blocks of the factor.

Bates et al. (2015, JSS 67(1), section 3) write the profiled criterion in terms of
the Cholesky factor L of

    M(theta) = Lambda' A Lambda + blockdiag(I_q, 0),    A = [Z X y]'[Z X y],

with Lambda = blockdiag(I_m1 (x) lambda_1, ..., I_mK (x) lambda_K, I_{p+1}).  The
sparsity of L is fixed by the design, so it is worked out here once, symbolically,
and every evaluation reuses it.  The columns of M fall into three blocks:

* **first**: the term with the most levels (lme4's first term).  Its diagonal
  block is block diagonal (one k0 x k0 block per level) and stays so: it is
  factored as a batch of small Cholesky factors.  Its coupling to the other
  columns is kept sparse (one k0-vector per non-zero level pair).
* **middle**: later terms whose levels, once the first term is eliminated, fall
  into many small groups that never meet ("clusters": the connected components
  of the graph linking two levels that share a level of the first term).  Their
  block is block diagonal over clusters, factored as a batch of dense cluster
  blocks.  Nested terms give one cluster per level of the outer factor (a
  diagonal block when the term is scalar and nested in the first); crossed terms
  fill in and form one large cluster, a dense block.
* **border**: the remaining later terms, then X, then y: a dense block.  A term
  with few levels crossed with everything (it would join all clusters into one)
  is cheaper here than in the middle.

Which later terms go to the middle and which to the border is chosen by the
flop count of one evaluation (:func:`choose_blocks`): the factorization and the
first term's Schur update, whose coupling to the middle is summed over pairs of
coupling entries (sparse) or, for one dense cluster, multiplied as a dense matrix,
whichever costs less.  The criterion does not
depend on the order of the random-effects columns (log|L_Z|^2 is invariant under
a symmetric permutation of the Z part), so this reordering changes nothing but
the cost; theta, ranef and varcorr keep lme4's term order.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from . import routing
from .levels import split_keys, unique_ints

__all__ = ["Structure", "Placement", "tril_indices", "initial_theta", "lower_bounds",
           "rectify_theta", "lambdas", "factor_lambdas", "diagonal_mask", "analyze",
           "analyze_pairs", "level_pairs", "bucket",
           "centring_basis", "lower_factor", "to_centred", "from_centred", "basis_matrices"]


# ----------------------------------------------------------------------------------
# theta's layout (lme4: per term, the lower triangle of lambda, column-major)
# ----------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def tril_indices(k: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of the lower triangle in column-major order (cached:
    treat as read-only)."""
    rows = [i for j in range(k) for i in range(j, k)]
    cols = [j for j in range(k) for _ in range(j, k)]
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def _theta_slices(ks) -> list[slice]:
    out, start = [], 0
    for k in ks:
        size = k * (k + 1) // 2
        out.append(slice(start, start + size))
        start += size
    return out


@dataclass(frozen=True)
class Structure:
    """Static shape of a model (hashable: part of a compiled function's key).

    ``k``/``m``: columns and (possibly padded) levels of each term, in lme4's term
    order; ``p``: (possibly padded) fixed effects.  ``middle`` and ``border``: the
    indices of the later terms in the clustered middle block and in the dense
    border; ``slots``: level slots of each middle term in a cluster; ``n_cl``:
    clusters.  ``dense_coupling``: the first term's coupling to the middle is kept
    as a dense matrix instead of pair lists (too many pairs, one cluster).
    ``basis``: empty, or per term None or the (k, k) matrix S (as nested tuples)
    whose columns the factor uses instead of the term's own: Z S, with the
    relative covariance factor S^-1 lambda (:func:`centring_basis`).
    """

    k: tuple[int, ...]
    m: tuple[int, ...]
    p: int
    middle: tuple[int, ...] = ()
    border: tuple[int, ...] = ()
    slots: tuple[int, ...] = ()
    n_cl: int = 0
    dense_coupling: bool = False
    basis: tuple = ()

    def plain(self) -> "Structure":
        """This structure without :attr:`basis` (the factor's lambda is then
        lower triangular in the centred columns: the optimizer's coordinates)."""
        return dataclasses.replace(self, basis=()) if self.basis else self

    @property
    def ntheta(self) -> int:
        return sum(k * (k + 1) // 2 for k in self.k)

    @property
    def theta_slices(self) -> list[slice]:
        return _theta_slices(self.k)

    @property
    def s(self) -> int:
        """Columns of one cluster block."""
        return sum(n * self.k[t] for t, n in zip(self.middle, self.slots))

    @property
    def q_border(self) -> int:
        return sum(self.k[t] * self.m[t] for t in self.border)

    @property
    def n_b(self) -> int:
        """Columns of the border block: border terms, X, y."""
        return self.q_border + self.p + 1

    @property
    def middle_segments(self) -> list[tuple[int, int, int, int]]:
        """(term, start, levels, k) of each middle term within a cluster's columns."""
        out, start = [], 0
        for t, n in zip(self.middle, self.slots):
            out.append((t, start, n, self.k[t]))
            start += n * self.k[t]
        return out

    @property
    def border_segments(self) -> list[tuple[int, int, int, int]]:
        """(term, start, levels, k) of each border term within the border columns."""
        out, start = [], 0
        for t in self.border:
            out.append((t, start, self.m[t], self.k[t]))
            start += self.m[t] * self.k[t]
        return out


def initial_theta(structure: Structure) -> np.ndarray:
    """lme4's starting value: identity relative covariance factors."""
    return np.concatenate([(r == c).astype(np.float64)
                           for r, c in map(tril_indices, structure.k)])


def diagonal_mask(structure: Structure) -> np.ndarray:
    """True at theta's entries on a diagonal of lambda."""
    return np.concatenate([r == c for r, c in map(tril_indices, structure.k)])


def lower_bounds(structure: Structure) -> np.ndarray:
    """lme4's bounds: 0 for diagonal elements of lambda, -inf otherwise."""
    return np.where(diagonal_mask(structure), 0.0, -np.inf)


def rectify_theta(theta, structure: Structure, xp=np):
    """Flip the sign of each lambda column with a negative diagonal element.

    The criterion depends on lambda only through lambda lambda', which is unchanged,
    so theta is optimized unconstrained and mapped to lme4's convention after
    (MixedModels.jl's ``rectify!``).  ``xp``: numpy or jax.numpy.
    """
    parts = []
    for k, sl in zip(structure.k, structure.theta_slices):
        rows, cols = tril_indices(k)
        block = theta[..., sl]
        diag_pos = np.array([np.flatnonzero((cols == j) & (rows == j))[0] for j in range(k)])
        signs = xp.where(block[..., diag_pos] < 0, -1.0, 1.0)
        parts.append(block * signs[..., cols])
    return xp.concatenate(parts, axis=-1)


def lambdas(theta, structure: Structure, xp=np) -> list:
    """theta (..., ntheta) -> the lower-triangular relative covariance factor lambda of
    each term, (..., k, k); leading axes (replicates) broadcast."""
    out = []
    for k, sl in zip(structure.k, structure.theta_slices):
        block = theta[..., sl]
        if k == 1:
            out.append(block[..., None])
            continue
        zero = xp.zeros(block.shape[:-1] + (1,), dtype=theta.dtype)
        vals = xp.concatenate([block, zero], axis=-1)
        out.append(vals[..., _tril_positions(k)])     # index -1: the appended zero
    return out


def basis_matrices(structure: Structure) -> list:
    """(S, S^-1) of each term with a basis (None for the others), NumPy."""
    out = []
    for t in range(len(structure.k)):
        S = structure.basis[t] if structure.basis else None
        if S is None:
            out.append(None)
        else:
            S = np.asarray(S, np.float64)
            out.append((S, np.linalg.inv(S)))
    return out


def factor_lambdas(theta, structure: Structure, xp=np) -> list:
    """Each term's relative covariance factor in the factor's columns: lambda, or
    S^-1 lambda for a term whose columns are Z S (``structure.basis``): then
    (Z S)(S^-1 lambda) = Z lambda, so the model and the spherical random effects u
    are the same, while the cross-products of Z S keep their digits."""
    lams = lambdas(theta, structure, xp)
    if not structure.basis:
        return lams
    for t, sm in enumerate(basis_matrices(structure)):
        if sm is not None:
            lams[t] = xp.asarray(sm[1]) @ lams[t]
    return lams


def lower_factor(A, xp=np):
    """A lower-triangular L = A Q (Q orthogonal) with L L' = A A' and a
    non-negative diagonal, for square A (..., k, k): Givens rotations of A's
    columns (Golub & Van Loan, "Matrix Computations", 4th ed., sec. 5.1.8), exact
    for singular A and free of LAPACK, so it runs under ``jax.vmap``."""
    k = A.shape[-1]
    cols = [A[..., :, j] for j in range(k)]
    for i in range(k):
        for j in range(i + 1, k):
            a, b = cols[i][..., i], cols[j][..., i]
            r = xp.hypot(a, b)
            nz = r > 0
            safe = xp.where(nz, r, 1.0)
            c = xp.where(nz, a / safe, 1.0)[..., None]
            s = xp.where(nz, b / safe, 0.0)[..., None]
            cols[i], cols[j] = c * cols[i] + s * cols[j], c * cols[j] - s * cols[i]
    L = xp.stack(cols, axis=-1)
    signs = xp.where(xp.diagonal(L, 0, -2, -1) < 0, -1.0, 1.0)
    return xp.tril(L * signs[..., None, :])


def _map_blocks(theta, structure: Structure, which: int, xp):
    parts = []
    lams = lambdas(theta, structure, xp)
    for k, sl, lam, sm in zip(structure.k, structure.theta_slices, lams,
                              basis_matrices(structure)):
        if sm is None:
            parts.append(theta[..., sl])
            continue
        rows, cols = tril_indices(k)
        parts.append(lower_factor(xp.asarray(sm[which]) @ lam, xp)[..., rows, cols])
    return xp.concatenate(parts, axis=-1)


def to_centred(theta, structure: Structure, xp=np):
    """theta -> the optimizer's coordinates phi: lambda(phi) = lower_factor(S^-1
    lambda(theta)), the same covariance in the columns Z S; terms without a
    basis keep their entries."""
    return _map_blocks(theta, structure, 1, xp) if structure.basis else theta


def from_centred(phi, structure: Structure, xp=np):
    """The inverse of :func:`to_centred`, rectified: lambda(theta) =
    lower_factor(S lambda(phi))."""
    if not structure.basis:
        return phi
    return rectify_theta(_map_blocks(phi, structure, 0, xp), structure, xp)


def centring_basis(terms, ratio: float | None = None) -> tuple:
    """The column basis S of each vector-valued term whose non-constant columns sit
    far from zero (``structure.basis``; () when no term needs one).

    A term (1 + x | g) with x near 1e4 and a spread of 1 has an intercept variance
    extrapolated 1e4 spreads away and a correlation of -1 to round-off: its
    cross-products and its theta both lose eight digits.  The unstructured
    covariance of a term is the same model in any basis of its columns, so the
    factor works with Z S, where S subtracts from each column x with |mean| >
    ``ratio`` sd (default :data:`mixedjax.routing.CENTRE_RATIO`) its mean times the
    constant column, and the optimizer searches in the centred covariance factor
    (:func:`to_centred`); theta stays lme4's.
    """
    ratio = routing.CENTRE_RATIO if ratio is None else ratio
    out, any_basis = [], False
    for t in terms:
        Z = np.asarray(t.Z, np.float64)
        k = Z.shape[1]
        S = None
        if k > 1 and len(Z):
            const = [j for j in range(k) if Z[0, j] != 0 and np.all(Z[:, j] == Z[0, j])]
            if const:
                j0 = const[0]
                mean, sd = Z.mean(axis=0), Z.std(axis=0)
                shift = [j for j in range(k)
                         if j not in const and abs(mean[j]) > ratio * sd[j]]
                if shift:
                    S = np.eye(k)
                    S[j0, shift] = -mean[shift] / Z[0, j0]
                    S = tuple(map(tuple, S.tolist()))
                    any_basis = True
        out.append(S)
    return tuple(out) if any_basis else ()


@functools.lru_cache(maxsize=None)
def _tril_positions(k: int) -> np.ndarray:
    """(k, k) index into theta's block of each lambda entry, -1 above the diagonal."""
    rows, cols = tril_indices(k)
    pos = np.full((k, k), -1)
    pos[rows, cols] = np.arange(len(rows))
    return pos


# ----------------------------------------------------------------------------------
# Symbolic analysis: which later terms go to the middle, and its clusters
# ----------------------------------------------------------------------------------
def bucket(size: int) -> int:
    """Round ``size`` up to 2^j, 1.25 * 2^j, 1.5 * 2^j or 1.75 * 2^j (waste < 25%),
    so that designs of nearby sizes share compiled code."""
    if size <= 8:
        return max(size, 1)
    base = 1 << (int(size).bit_length() - 1)
    for mult in (1.0, 1.25, 1.5, 1.75, 2.0):
        cand = int(base * mult)
        if cand >= size:
            return cand
    return 2 * base


class Placement(NamedTuple):
    """Where each later term's levels sit in the factor (NumPy index arrays).

    For a middle term t, level l has columns ``cluster[t][l] * s + start_t +
    slot[t][l] * k_t + j`` of the clustered block (``start_t`` from
    :attr:`Structure.middle_segments`); for a border term, columns ``start_t +
    l * k_t + j`` of the border.  Entries for other terms are None.
    """

    cluster: tuple
    slot: tuple


def _components(u: np.ndarray, v: np.ndarray, n: int) -> np.ndarray:
    """Connected components of the undirected graph on ``n`` nodes with edges (u, v):
    each node's label is the smallest node of its component.

    Minimum-label propagation with pointer jumping (Shiloach & Vishkin 1982): every
    round takes the smaller label across each edge, then each label jumps to its own
    label, so labels halve their distance to the root; a few rounds suffice for
    grouping factors, in NumPy alone (SciPy's sparse graph package costs 0.1 s to
    import, more than a small model's whole fit).  Edges are read in chunks, so the
    temporaries stay small when there are millions of them."""
    lab = np.arange(n, dtype=np.int32 if n < 2 ** 31 else np.int64)
    if len(u) == 0:
        return lab
    chunk = routing.ENTRY_CHUNK
    while True:
        new = lab.copy()
        for lo in range(0, len(u), chunk):
            uu, vv = u[lo:lo + chunk], v[lo:lo + chunk]
            m = np.minimum(lab[uu], lab[vv])
            np.minimum.at(new, uu, m)
            np.minimum.at(new, vv, m)
        new = new[new]
        if np.array_equal(new, lab):
            return lab
        lab = new


def level_pairs(terms) -> list[np.ndarray]:
    """All the layout analysis reads of the rows: for each later term t (lme4's
    order), the sorted distinct keys ``a * m_t + b`` of the pairs (first-term level
    a, term-t level b) that meet in a row."""
    codes0 = np.asarray(terms[0].codes, np.int64)
    return [unique_ints(codes0 * int(t.nlevels) + np.asarray(t.codes, np.int64))
            for t in terms[1:]]


def _clusters(m0: int, middle_pairs: list[np.ndarray], middle_m: list[int]):
    """Connected components of the graph on the middle levels in which two levels
    are joined when they share a level of the first term (every such pair fills
    in when the first term is eliminated); ``middle_pairs`` the middle terms'
    :func:`level_pairs`.  Returns per middle term the component of each level, and
    the number of components."""
    offsets = np.cumsum([0] + list(middle_m))
    nodes = int(offsets[-1])
    if nodes == 0:
        return [], 0
    # Bipartite graph first-term level -- middle level; components restricted to
    # the middle levels.  Node numbers fit int32 whenever the levels do.
    us, vs = [], []
    for keys, m, off in zip(middle_pairs, middle_m, offsets):
        a, b = split_keys(keys, m, m0 + nodes)
        us.append(a)
        b += b.dtype.type(m0 + off)
        vs.append(b)
    u = us[0] if len(us) == 1 else np.concatenate(us)
    v = vs[0] if len(vs) == 1 else np.concatenate(vs)
    del us, vs
    label = _components(u, v, m0 + nodes)
    mid = label[m0:].astype(np.int64)
    used, comp = unique_ints(mid, return_inverse=True)
    return [comp[a:b] for a, b in zip(offsets[:-1], offsets[1:])], len(used)


def _slots(comp: np.ndarray, n_cl: int) -> tuple[np.ndarray, int]:
    """Slot of each level within its cluster (levels in order) and the most slots."""
    order = np.argsort(comp, kind="stable")
    counts = np.bincount(comp, minlength=n_cl)
    starts = np.cumsum(counts) - counts
    slot = np.empty(len(comp), np.int64)
    slot[order] = np.arange(len(comp)) - np.repeat(starts, counts)
    return slot, int(counts.max()) if len(counts) else 0


def _level_counts(keys: np.ndarray, m0: int, m: int) -> np.ndarray:
    """For each first-term level, the number of distinct levels of a later term in
    its rows (the later term's coupling entries of that level, per column), from
    the term's :func:`level_pairs`."""
    return np.bincount(keys // m, minlength=m0)


def _cost(ks, ms, n_cl, slots, mid, border, p, entries,
          max_border: int) -> tuple[float, bool]:
    """Flops of one evaluation (factorization and gradient) for a choice of middle
    and border terms, and whether the first term's coupling to the middle is
    cheaper as a dense matrix.

    ``entries`` (m0,): the first term's coupling entries per level in the middle
    columns.  Besides the factorization of the middle clusters and the border, the
    first term's Schur update and its adjoint cost a dense product over the border
    columns and either sums over the coupling entries of each level and their pairs
    (sparse, memory-bound: weighted by ``routing.PAIR_WEIGHT`` against dense flops)
    or, for one cluster wider than ``max_border``, dense products with the
    coupling; pairs beyond
    ``routing.PAIR_LIMIT`` (memory) rule out the sparse form."""
    k0, m0 = ks[0], ms[0]
    s = sum(slots[i] * ks[t] for i, t in enumerate(mid))
    nb = sum(ks[t] * ms[t] for t in border) + p + 1
    factor = n_cl * (s ** 3 + s * s * nb + s * nb * nb) + nb ** 3
    schur = 2.0 * m0 * k0 * nb * nb
    if not n_cl:
        return factor + schur, False
    pairs = float(np.sum(entries * (entries + 1) // 2))
    sparse = (2.0 * routing.PAIR_WEIGHT * (pairs * k0 + float(np.sum(entries)) * nb) * k0
              if pairs <= routing.PAIR_LIMIT else np.inf)
    # One cluster with a dense coupling is the border block under another name,
    # whose code is simpler: it serves only clusters too large for the border.
    dense = 2.0 * m0 * k0 * s * (s + nb) if n_cl == 1 and s > max_border else np.inf
    return factor + schur + min(sparse, dense), bool(dense < sparse)


def choose_blocks(pairs: list[np.ndarray], ks: list[int], ms: list[int], p: int,
                  max_border: int | None = None):
    """Choose the middle and border terms (module docstring) by flop count.

    ``pairs``: the :func:`level_pairs` of the later terms; ``ks``/``ms``: every
    term's columns and levels in lme4's order (the first term is first).  Returns
    (middle, border, clusters, n_cl, slots, slot arrays, dense coupling): every subset
    of the later terms is tried as border (the number of later terms is small),
    keeping the cheapest.
    """
    max_border = routing.MAX_BORDER if max_border is None else max_border
    later = list(range(1, len(ks)))
    per_level = {t: ks[t] * _level_counts(pairs[t - 1], ms[0], ms[t]) for t in later}
    best = None
    subsets = itertools.chain.from_iterable(
        itertools.combinations(later, r) for r in range(len(later) + 1))
    for border in subsets:
        if len(later) > 6 and 0 < len(border) < len(later):
            continue      # many terms: only all-middle or all-border
        if sum(ks[t] * ms[t] for t in border) > max_border:
            continue
        mid = [t for t in later if t not in border]
        comps, n_cl = _clusters(ms[0], [pairs[t - 1] for t in mid], [ms[t] for t in mid])
        slot_arrays, slots = [], []
        for comp in comps:
            sl, most = _slots(comp, n_cl)
            slot_arrays.append(sl)
            slots.append(most)
        entries = sum((per_level[t] for t in mid), np.zeros(ms[0], np.int64))
        cost, dense = _cost(ks, ms, n_cl, slots, mid, border, p, entries, max_border)
        if best is None or cost < best[0]:
            best = (cost, tuple(mid), tuple(border), comps, n_cl, tuple(slots), slot_arrays,
                    dense)
    if best is None:
        raise ValueError("the random-effects terms are too large for a dense border block")
    return best[1:]


def analyze(terms, p: int, basis: tuple = ()) -> tuple[Structure, Placement]:
    """The :class:`Structure` and :class:`Placement` of a design.

    ``terms``: sequence with ``codes`` (n,), ``Z`` (n, k) and ``nlevels``, in
    lme4's order; ``p`` the number of fixed effects; ``basis``: the terms' column
    bases (:func:`centring_basis`), kept in the structure.
    """
    return analyze_pairs(level_pairs(terms), [t.Z.shape[1] for t in terms],
                         [int(t.nlevels) for t in terms], p, basis)


def analyze_pairs(pairs: list[np.ndarray], ks: list[int], ms: list[int], p: int,
                  basis: tuple = ()) -> tuple[Structure, Placement]:
    """:func:`analyze` from the later terms' :func:`level_pairs` (which levels meet
    the first term's), the terms' columns ``ks`` and levels ``ms``: the layout of a
    design whose rows are not at hand (the sums of partitions)."""
    mid, border, comps, n_cl, slots, slot_arrays, dense = choose_blocks(pairs, ks, ms, p)
    cluster = [None] * len(ks)
    slot = [None] * len(ks)
    for t, comp, sl in zip(mid, comps, slot_arrays):
        cluster[t] = comp
        slot[t] = sl
    structure = Structure(k=tuple(ks), m=tuple(ms), p=p, middle=mid, border=border,
                          slots=slots, n_cl=n_cl, dense_coupling=dense, basis=tuple(basis))
    return structure, Placement(tuple(cluster), tuple(slot))


# ----------------------------------------------------------------------------------
# From the factor's layout back to terms and levels
# ----------------------------------------------------------------------------------
def per_term(first, middle, border, structure: Structure, placement: Placement, xp=np):
    """Split per-column quantities into one (levels, k) array per term, in lme4's
    order: ``first`` (m0, k0), ``middle`` (n_cl, s) in cluster layout, ``border``
    (q_border,) or longer (only its first q_border entries are read)."""
    s = structure
    out = [first]
    for t in range(1, len(s.k)):
        k, m = s.k[t], s.m[t]
        if t in s.middle:
            start = dict((tt, st_) for tt, st_, _, _ in s.middle_segments)[t]
            cols = (placement.cluster[t] * s.s + start + placement.slot[t] * k)[:, None] \
                + np.arange(k)
            out.append(xp.reshape(middle, (-1,))[cols])
        else:
            start = dict((tt, st_) for tt, st_, _, _ in s.border_segments)[t]
            out.append(xp.reshape(border[start:start + m * k], (m, k)))
    return out


def per_term_blocks(first, middle, border, structure: Structure, placement: Placement,
                    xp=np):
    """The diagonal (k, k) block of each level of each term, (levels, k, k) per term
    in lme4's order, from ``first`` (m0, k0, k0), ``middle`` (n_cl, s, s) and
    ``border`` (n_b, n_b) matrices in the factor's layout."""
    s = structure
    out = [first]
    for t in range(1, len(s.k)):
        k, m = s.k[t], s.m[t]
        if t in s.middle:
            start = dict((tt, st_) for tt, st_, _, _ in s.middle_segments)[t]
            cl = placement.cluster[t]
            col = start + placement.slot[t] * k
            idx = col[:, None] + np.arange(k)
            out.append(middle[cl[:, None, None], idx[:, :, None], idx[:, None, :]])
        else:
            start = dict((tt, st_) for tt, st_, _, _ in s.border_segments)[t]
            idx = start + np.arange(m)[:, None] * k + np.arange(k)
            out.append(border[idx[:, :, None], idx[:, None, :]])
    return out
