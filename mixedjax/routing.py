"""Every threshold that routes a computation to one specialization or another, in one
place.  None of them changes a result beyond round-off; each only chooses how the one
definition is computed.  Tests may lower a threshold (``monkeypatch.setattr``) to
run the other route on small data."""

__all__ = ["UNROLL", "LOOP_LIMIT", "MAX_BORDER", "PAIR_LIMIT", "PAIR_WEIGHT", "SPARSE_OPERATOR",
           "SCALAR_SHORTCUT", "THREADED_WORK", "SMALL_WORK", "STEP_EVALS", "CENTRE_RATIO",
           "ENTRY_CHUNK", "UNROLL_PRODUCT", "SMALL_PRODUCT"]

# backend: factor blocks of up to this many columns by unrolled elementwise code
# (batched over levels) rather than a LAPACK call per block.
UNROLL = 6

# backend (NumPy): products of level blocks (a stack of (m, k) by (k, n)) of up to this
# many multiply-adds m k n are written out entry by entry rather than through
# NumPy's batched matmul (2 x 2 blocks: 2.4x faster at 20,000 levels; 3 x 3 slower).
UNROLL_PRODUCT = 8

# backend (NumPy): products of level blocks with fewer entries than this (a few
# hundred levels) stay in one matmul call, whose overhead is the smallest.
SMALL_PRODUCT = 4096

# backend (JAX): blocks of up to this many columns by a loop over columns vectorized
# over the batch (no LAPACK call, which under vmap can hang jaxlib's CPU thread
# pool); larger ones by LAPACK.
LOOP_LIMIT = 64

# structure.choose_blocks: at most this many columns (levels x k) in the dense border
# block; later terms beyond it stay in the sparse middle block.
MAX_BORDER = 2000

# crossprod: beyond this many pairs of coupling entries (pairs of later-term columns
# that share a first-term level) the first term's Schur update is a dense product
# instead of a sum over pairs (MovieLens-sized data: users with thousands of ratings
# give ~2e8 pairs).
PAIR_LIMIT = 50_000_000

# structure.choose_blocks: the cost of one multiply-add of a sum over pairs of coupling
# entries (a sparse, memory-bound product) in dense matrix-product flops.
PAIR_WEIGHT = 10.0

# factor (eager): the pair sums as a SciPy sparse matrix from this many non-zeros (its
# product is faster than NumPy's weighted counts, and pays for its 0.1 s import).
SPARSE_OPERATOR = 1_000_000

# criterion (eager gradient): a scalar term with |lambda| above this takes the
# diagonal-only form of its trace-rule derivative, (1/lambda) sum (1 - G_cc); closer to
# zero it uses the general form, which has no division by lambda.
SCALAR_SHORTCUT = 1e-3

# threads: flops of one factorization from which BLAS threads pay off, and below
# which BLAS does not thread anyway.
THREADED_WORK = 2e10
SMALL_WORK = 1e6

# batch: evaluations (Newton iterations and line-search halvings) per compiled kernel
# call of a batched refit, between which finished lanes are refilled with new replicates.
STEP_EVALS = 6

# structure.centring_basis: a vector-valued term's column is centred (in the factor's
# basis, not in the model) when its mean exceeds this many standard deviations.  At 3
# (x ~ 5 +- 1 in a slope) the centred search already takes 23-25 evaluations where
# the raw one took 39-62, and the eager and JAX criteria agree 5x closer.
CENTRE_RATIO = 3.0

# structure (connected components), start (moment equations): level pairs are read
# this many at a time, so that the temporaries stay small for millions of pairs.
ENTRY_CHUNK = 1 << 20
