"""Estimated marginal means and pairwise contrasts against R.

References: ``inference_reference.json`` (R's emmeans for the oats split plot,
``~ N``, Satterthwaite and Kenward-Roger, Tukey-adjusted pairs) and
``inference_extra_reference.json`` (lmerTest's ``ls_means`` means and differences,
which weight the other factors equally and set covariates to their means as emmeans
does, with p-values adjusted by R's ``p.adjust`` and ``ptukey`` per family; a
``by`` case with the differences within each level of V from ``contest``).

Tolerance 1e-4 relative at our optimum (lme4 stops ~1e-6 short of it in the
criterion); p-values 1e-4 relative or 1e-5 absolute: R's ptukey computes the upper
tail as 1 - P, so p-values below ~1e-8 only agree absolutely.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import mixedjax
from conftest import LME4, REF, case_data, reference_fit

with open(REF / "inference_reference.json") as fh:
    INF = json.load(fh)
with open(REF / "inference_extra_reference.json") as fh:
    EXTRA_INF = json.load(fh)

RTOL = 1e-4
P_TOL = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def fits():
    out = {"oats": reference_fit(LME4["oats_splitplot"])}
    for name in ("oats_unbalanced", "cake"):
        cs = EXTRA_INF["anova"][name]
        na = {cs["response"]: cs["na_rows"]} if "na_rows" in cs else None
        out[name] = mixedjax.lmer(cs["formula"], case_data(cs["data"], cs["factors"], na))
    return out


@pytest.mark.parametrize("key,ddf", [("oats_emmeans_N_satterthwaite", "Satterthwaite"),
                                     ("oats_emmeans_N_kenwardroger", "Kenward-Roger")])
def test_oats_emmeans_against_r(fits, key, ddf):
    r = INF[key]
    res = fits["oats"].emmeans("N", ddf=ddf)
    em, ct = res.emmeans, res.contrasts
    assert list(em.columns) == ["N", "emmean", "SE", "df", "lower.CL", "upper.CL"]
    assert list(em["N"]) == r["levels"]
    for col, rk in [("emmean", "emmean"), ("SE", "SE"), ("df", "df"), ("lower.CL", "lower"),
                    ("upper.CL", "upper")]:
        np.testing.assert_allclose(em[col], r[rk], rtol=RTOL, err_msg=col)
    assert list(ct.columns) == ["contrast", "estimate", "SE", "df", "t.ratio", "p.value"]
    assert list(ct["contrast"]) == r["contrasts"]
    for col, rk in [("estimate", "estimate"), ("SE", "cSE"), ("df", "cdf"), ("t.ratio", "t")]:
        np.testing.assert_allclose(ct[col], r[rk], rtol=RTOL, err_msg=col)
    np.testing.assert_allclose(ct["p.value"], r["p_tukey"], **P_TOL)


def _align(frame, cols, keys):
    index = {tuple(row): i for i, row in enumerate(frame[cols].itertuples(index=False))}
    return [index[tuple(k)] for k in keys]


@pytest.mark.parametrize("key", sorted(EXTRA_INF["means"]))
def test_means_and_adjusted_pairs_against_lmertest(fits, key):
    r = EXTRA_INF["means"][key]
    m = fits[r["case"]]
    spec, by = r["specs"], r["by"]
    for adjust, p_ref in r["p_adjusted"].items():
        res = m.emmeans(spec, by=by, ddf=r["ddf"], adjust=adjust)
        em, ct = res.emmeans, res.contrasts
        if by:
            rows = _align(em, [spec, by], zip(r["levels"], r["by_levels"]))
            crow = _align(ct, ["contrast", by], zip(r["contrasts"], r["contrast_by_levels"]))
        else:
            rows = _align(em, [spec], [(v,) for v in r["levels"]])
            crow = _align(ct, ["contrast"], [(v,) for v in r["contrasts"]])
        assert len(em) == len(r["levels"]) and len(ct) == len(r["contrasts"])
        for col, rk in [("emmean", "emmean"), ("SE", "SE"), ("df", "df"),
                        ("lower.CL", "lower"), ("upper.CL", "upper")]:
            np.testing.assert_allclose(em[col].to_numpy()[rows], r[rk], rtol=RTOL,
                                       err_msg=f"{adjust} {col}")
        for col, rk in [("estimate", "estimate"), ("SE", "cSE"), ("df", "cdf"),
                        ("t.ratio", "t")]:
            np.testing.assert_allclose(ct[col].to_numpy()[crow], r[rk], rtol=RTOL,
                                       err_msg=f"{adjust} {col}")
        np.testing.assert_allclose(ct["p.value"].to_numpy()[crow], p_ref, **P_TOL,
                                   err_msg=adjust)


def test_by_groups_layout_and_repr(fits):
    res = fits["oats_unbalanced"].emmeans("N", by="V", level=0.9)
    formula = fits["oats_unbalanced"].emmeans("~ N | V", level=0.9)
    assert formula.specs == ["N"] and formula.by == ["V"]
    np.testing.assert_array_equal(formula.contrasts["p.value"], res.contrasts["p.value"])
    em, ct = res.emmeans, res.contrasts
    assert list(em.columns[:2]) == ["N", "V"] and len(em) == 12
    assert list(em["V"][:4]) == ["Golden.rain"] * 4          # by groups slowest
    assert list(ct.columns) == ["contrast", "V", "estimate", "SE", "df", "t.ratio", "p.value"]
    assert len(ct) == 18 and set(ct["V"]) == {"Golden.rain", "Marvellous", "Victory"}
    # 90% limits use the t quantile with each mean's df.
    from scipy import stats
    half = stats.t.ppf(0.95, em["df"]) * em["SE"]
    np.testing.assert_allclose(em["upper.CL"] - em["emmean"], half, rtol=1e-10)
    text = repr(res)
    assert text.startswith("$emmeans") and "$contrasts" in text
    assert "Confidence level used: 0.9" in text
    assert "P value adjustment: tukey method for comparing a family of 4 estimates" in text
    main = repr(fits["oats"].emmeans("N"))
    assert "Results are averaged over the levels of: V" in main
    assert "0.0cwt - 0.2cwt" in main


def test_means_average_the_reference_grid(fits):
    """Each mean is l'beta with l the equally weighted average of the grid's rows; a
    covariate sits at its mean (cake: temp)."""
    m = fits["cake"]
    res = m.emmeans("recipe")
    temp = m.model.design.frame["temp"].mean()
    b = m.fixef
    expect_a = b["(Intercept)"] + b["temp"] * temp
    expect_b = expect_a + b["recipeB"] + b["recipeB:temp"] * temp
    np.testing.assert_allclose(res.emmeans["emmean"][:2], [expect_a, expect_b], rtol=1e-12)
    np.testing.assert_allclose(res.L @ b.to_numpy(), res.emmeans["emmean"], rtol=1e-12)


def test_bad_input(fits):
    m = fits["oats"]
    with pytest.raises(ValueError, match="'W' is not a factor"):
        m.emmeans("W")
    with pytest.raises(ValueError, match="'Block' is not a factor"):
        m.emmeans("N", by="Block")
    with pytest.raises(ValueError, match="is not a factor"):
        fits["cake"].emmeans("temp")
    with pytest.raises(ValueError, match="unknown p-value adjustment"):
        m.emmeans("N", adjust="scheffe")
    with pytest.raises(ValueError, match="unknown ddf method"):
        m.emmeans("N", ddf="containment")
    with pytest.raises(ValueError, match="between 0 and 1"):
        m.emmeans("N", level=95)
    with pytest.raises(ValueError, match="both specs and by"):
        m.emmeans("N", by="N")
    with pytest.raises(TypeError, match="specs must be"):
        m.emmeans(3)
    with pytest.raises(ValueError, match="either after"):
        m.emmeans("N | V", by="V")
    ml = reference_fit(LME4["sleepstudy_ml"])
    with pytest.raises(ValueError, match="only available for REML"):
        ml.emmeans("Days", ddf="Kenward-Roger")
