"""REML criterion of ``y ~ x0 + (1 | g0)`` on ``repro/highR2.csv`` at a fixed theta,
computed with 50 significant digits (mpmath) for the precision regression test.

For a scalar random intercept V = I + theta^2 Z Z' is block-diagonal by group, with
V_g^-1 = I - theta^2 / (1 + n_g theta^2) 1 1' and |V_g| = 1 + n_g theta^2, so the
criterion -2 l_R = log|V| + log|X'V^-1 X| + (n - p)(1 + log(2 pi r^2 / (n - p))),
r^2 = (y - X beta)' V^-1 (y - X beta) (Bates et al. 2015, eq. 41), needs no large matrix.
Data values enter as the exact binary doubles a fit sees. Run: ``python tests/reference/make_highr2_reference.py`` (needs mpmath).
"""

from pathlib import Path

import mpmath as mp
import pandas as pd

THETA = 1.2791222933900102


def reml_criterion(data, theta):
    t2 = mp.mpf(theta) ** 2
    n, p = len(data), 2
    xtvx, xtvy, ytvy, logdet = mp.matrix(2, 2), mp.matrix(2, 1), mp.mpf(0), mp.mpf(0)
    for _, sub in data.groupby("g0"):
        y = [mp.mpf(float(v)) for v in sub.y]
        x = [mp.mpf(float(v)) for v in sub.x0]
        ng = len(y)
        c = t2 / (1 + ng * t2)
        logdet += mp.log(1 + ng * t2)
        cols = [[mp.mpf(1)] * ng, x]

        def q(a, b):
            return mp.fsum(ai * bi for ai, bi in zip(a, b)) - c * mp.fsum(a) * mp.fsum(b)

        for i in range(2):
            xtvy[i] += q(cols[i], y)
            for j in range(2):
                xtvx[i, j] += q(cols[i], cols[j])
        ytvy += q(y, y)
    beta = mp.lu_solve(xtvx, xtvy)
    r2 = ytvy - (xtvy.T * beta)[0]
    return logdet + mp.log(mp.det(xtvx)) + (n - p) * (1 + mp.log(2 * mp.pi * r2 / (n - p)))


if __name__ == "__main__":
    mp.mp.dps = 50
    data = pd.read_csv(Path(__file__).parent / "repro" / "highR2.csv")
    print(f"theta = {THETA}")
    print(f"REML criterion = {mp.nstr(reml_criterion(data, THETA), 20)}")
