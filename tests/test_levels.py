"""mixedjax.levels: distinct integer keys by one sort, equal to numpy.unique."""

import numpy as np
import pytest

from mixedjax.levels import unique_ints


@pytest.mark.parametrize("n,high", [(0, 5), (1, 5), (1000, 7), (5000, 2 ** 40)])
def test_unique_ints_equals_numpy(n, high):
    x = np.random.default_rng(n).integers(-high, high, n)
    np.testing.assert_array_equal(unique_ints(x), np.unique(x))
    u, inv = unique_ints(x, return_inverse=True)
    nu, ninv = np.unique(x, return_inverse=True)
    np.testing.assert_array_equal(u, nu)
    np.testing.assert_array_equal(inv, ninv.reshape(-1))
    assert inv.dtype == np.int64
