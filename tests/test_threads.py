"""BLAS threads of eager fits (mixedjax.threads)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from mixedjax import threads
from mixedjax.structure import Structure


def _threads_inside(env_extra=None) -> list[int]:
    """Thread counts of every BLAS library seen inside ``blas_threads`` of a model
    with a 201-column dense border, in a fresh process where SciPy's LAPACK is not
    loaded yet when the fit starts."""
    code = textwrap.dedent("""
        import json, sys
        import numpy, mixedjax
        from mixedjax import threads
        from mixedjax.structure import Structure
        assert "scipy.linalg" not in sys.modules
        with threads.blas_threads(Structure(k=(1,), m=(10,), p=200)):
            import scipy.linalg
            from threadpoolctl import threadpool_info
            print(json.dumps([i["num_threads"] for i in threadpool_info()
                              if i["user_api"] == "blas"]))
    """)
    env = {k: v for k, v in os.environ.items() if k != "MIXEDJAX_BLAS_THREADS"}
    env.update({"OPENBLAS_NUM_THREADS": "2", **(env_extra or {})})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_blas_library_limited_in_a_moderate_fit():
    """NumPy's and SciPy's OpenBLAS alike run one thread in a fit whose dense work
    is too small for threads to pay, SciPy's loaded during the fit included."""
    counts = _threads_inside()
    assert counts and all(c == 1 for c in counts)


def test_zero_leaves_blas_alone():
    counts = _threads_inside({"MIXEDJAX_BLAS_THREADS": "0"})
    assert counts and max(counts) == 2


@pytest.mark.parametrize("bad", [-1, 1.5, True, "2"])
def test_set_blas_threads_rejects_bad_values(bad):
    with pytest.raises(ValueError, match="BLAS threads"):
        threads.set_blas_threads(bad)


def test_dense_work_counts_the_border():
    small = threads.dense_work(Structure(k=(1,), m=(10,), p=2))
    large = threads.dense_work(Structure(k=(1,), m=(10,), p=200))
    assert large == pytest.approx(2.0 * 201 ** 3)
    assert small < large
