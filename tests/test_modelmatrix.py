"""The joint build of a formula's model matrices (one pass of patsy over the data)
equals building each matrix on its own, whatever the columns' dtypes."""

import numpy as np
import pandas as pd
import pytest

from mixedjax.modelmatrix import r_model_matrices, r_model_matrix


def frame():
    rng = np.random.default_rng(3)
    n = 60
    return pd.DataFrame({
        "x": rng.normal(size=n),
        "k": rng.integers(0, 4, n),
        "g": pd.Categorical(rng.choice(["b", "a", "c"], n), categories=["c", "b", "a"]),
        "s": rng.choice(["u", "v"], n).astype(object),
        "flag": rng.random(n) > 0.5,
        "ni": pd.array(rng.integers(0, 3, n), dtype="Int64"),
        "st": pd.array(rng.choice(["p", "q", "r"], n), dtype="string"),
        "w": rng.random(n),
    })


@pytest.mark.parametrize("exprs", [
    ["x + k", "1 + x"],
    ["g * x + s", "1 + flag"],
    ["ni + st + x:g", "0 + g"],
    ["1", "1"],
    ["0 + x", "x + w"],
    ["log(w) + x", "1 + scale(x)"],          # expressions: built one at a time
    ["C(k) + g", "1 + C(s)"],
])
def test_joint_equals_separate(exprs):
    data = frame()
    whats = [f"m{i}" for i in range(len(exprs))]
    joint = r_model_matrices(exprs, whats, data)
    for (mat, info, perm, names), e, w in zip(joint, exprs, whats):
        mat1, info1, perm1, names1 = r_model_matrix(e, data, w)
        np.testing.assert_array_equal(mat, mat1)
        np.testing.assert_array_equal(perm, perm1)
        assert names == names1
        assert info.column_names == info1.column_names
        assert list(info.term_codings) == list(info1.term_codings)


def test_joint_errors_name_the_matrix():
    data = frame()
    data["bad"] = np.inf
    with pytest.raises(ValueError, match="the random-effects term .* model matrix"):
        r_model_matrices(["x", "1 + bad"], ["fixed-effects", "random-effects term (bad|g)"],
                         data)
    with pytest.raises(ValueError, match="fixed-effects model matrix"):
        r_model_matrices(["x + nosuch(x)", "1"], ["fixed-effects", "random term"], data)
