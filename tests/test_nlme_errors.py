"""Bad input to lme, gls and the nlme structures: clear errors, raised before fitting."""

from __future__ import annotations

import numpy as np
import pytest

import mixedjax
from mixedjax import CorAR1, CorCAR1, CorCompSymm, CorSymm, VarIdent, VarPower, gls, lme
from mixedjax.nlme import VarFixed

F = "distance ~ age + Sex"
RI = "~ 1 | Subject"


@pytest.fixture(scope="module")
def orth():
    return mixedjax.datasets.load("orthodont")


def test_correlation_grouping_must_match_random(orth):
    with pytest.raises(ValueError, match="does not match the random-effects grouping"):
        lme(F, orth, RI, correlation=CorAR1("~ 1 | Sex"))
    with pytest.raises(ValueError, match="does not match"):
        lme(F, orth, RI, correlation=CorAR1("~ 1 | Subject/age"))


def test_repeated_times_within_a_group(orth):
    d = orth.copy()
    d.loc[1, "age"] = 8  # subject M01 now has age 8 twice
    with pytest.raises(ValueError, match="repeats a value within a group"):
        lme(F, d, RI, correlation=CorAR1("~ age | Subject"))
    with pytest.raises(ValueError, match="repeats a value within a group"):
        gls(F, d, correlation=CorCAR1("~ age | Subject"))


def test_ar1_needs_integer_times():
    ovary = mixedjax.datasets.load("ovary")
    with pytest.raises(ValueError, match="integer times; use CorCAR1"):
        lme("follicles ~ s1 + c1", ovary, "~ 1 | Mare", correlation=CorAR1("~ Time | Mare"))


def test_varident_stratum_with_one_observation(orth):
    d = orth.copy()
    d["grp"] = np.where(np.arange(len(d)) == 5, "lone", "many")
    with pytest.raises(ValueError, match=r"\['lone'\] have a single observation"):
        lme(F, d, RI, weights=VarIdent("~ 1 | grp"))


@pytest.mark.parametrize("method", ["reml2", "", None, 1])
def test_unknown_method(orth, method):
    with pytest.raises(ValueError, match="method must be 'REML' or 'ML'"):
        gls(F, orth, method=method)


@pytest.mark.parametrize("call", [
    lambda d: lme("distance ~ age + height", d, RI),
    lambda d: lme(F, d, "~ 1 | Patient"),
    lambda d: gls("weight ~ age", d),
    lambda d: gls(F, d, weights=VarPower("~ height")),
    lambda d: gls(F, d, correlation=CorAR1("~ 1 | Patient")),
])
def test_formula_naming_a_missing_column(orth, call):
    with pytest.raises(ValueError, match="not found in data"):
        call(orth)


def test_argument_types(orth):
    with pytest.raises(TypeError, match="data must be a pandas DataFrame"):
        lme(F, orth.to_dict(), RI)
    with pytest.raises(TypeError, match="weights must be a variance function"):
        lme(F, orth, RI, weights=CorAR1(RI))
    with pytest.raises(TypeError, match="correlation must be a correlation structure"):
        lme(F, orth, RI, correlation=VarIdent("~ 1 | Sex"))
    with pytest.raises(TypeError, match="random must be a formula string"):
        lme(F, orth, 3)
    with pytest.raises(TypeError, match="form must be a string"):
        CorAR1(1)


@pytest.mark.parametrize("random, err, msg", [
    ("~ 1", ValueError, "names no grouping factor"),
    ("~ age", ValueError, "names no grouping factor"),
    ("1 | Subject", ValueError, "cannot parse random"),
    ("(1 | Subject) + (1 | Sex)", NotImplementedError, "nested grouping factors only"),
])
def test_bad_random(orth, random, err, msg):
    with pytest.raises(err, match=msg):
        lme(F, orth, random)


def test_lme_needs_random(orth):
    with pytest.raises(ValueError, match="lme needs the random effects"):
        lme(F, orth)


def test_random_effects_belong_in_random(orth):
    with pytest.raises(ValueError, match="contains a random-effects term"):
        lme(F + " + (1 | Subject)", orth, RI)
    with pytest.raises(ValueError, match="contains a random-effects term"):
        gls(F + " + (1 | Subject)", orth)


def test_gls_correlation_needs_groups(orth):
    with pytest.raises(NotImplementedError, match="no grouping factor"):
        gls(F, orth, correlation=CorAR1())


@pytest.mark.parametrize("make, msg", [
    (lambda: VarIdent("~ 1"), "needs a stratifying factor"),
    (lambda: VarPower("~ 1"), "needs a variance covariate"),
    (lambda: VarIdent("1 | Sex"), "must be a one-sided formula"),
    (lambda: VarIdent("~ 1 | a/b"), "cannot be nested"),
    (lambda: VarFixed("~ age | Sex"), "takes no strata"),
])
def test_bad_structure_forms(make, msg):
    with pytest.raises(ValueError, match=msg):
        make()


@pytest.mark.parametrize("structure, msg", [
    (CorAR1(RI, value=1.5), r"value must lie in \(-1, 1\)"),
    (CorCAR1("~ age | Subject", value=0.0), r"value must lie in \(0, 1\)"),
    (CorCompSymm(RI, value=-0.5), "value must lie in"),
    (CorSymm(RI, value=[0.9, 0.9, -0.9, 0.9, 0.9, 0.9]), "positive-definite"),
    (CorSymm(RI, value=[0.1, 0.2]), "must have 6 entries"),
])
def test_bad_initial_values(orth, structure, msg):
    with pytest.raises(ValueError, match=msg):
        gls(F, orth, correlation=structure)


def test_bad_variance_initial_values(orth):
    with pytest.raises(ValueError, match="not parameters"):
        gls(F, orth, weights=VarIdent("~ 1 | Sex", value={"Other": 2.0}))
    with pytest.raises(ValueError, match="must be positive"):
        gls(F, orth, weights=VarIdent("~ 1 | Sex", value=[-1.0]))


def test_corsymm_positions_must_be_consecutive(orth):
    with pytest.raises(ValueError, match="consecutive integer values 1, 2, ..., M"):
        gls(F, orth, correlation=CorSymm("~ age | Subject"))


def test_compound_symmetry_needs_groups_of_two(orth):
    d = orth.copy()
    d["single"] = np.arange(len(d))
    with pytest.raises(ValueError, match="single observation"):
        gls(F, d, correlation=CorCompSymm("~ 1 | single"))


def test_varfixed_needs_positive_covariate(orth):
    d = orth.copy()
    d["zero"] = 0.0
    with pytest.raises(ValueError, match="variances must be positive"):
        gls(F, d, weights=VarFixed("~ zero"))


def test_non_numeric_covariate(orth):
    with pytest.raises(TypeError, match="must be numeric"):
        gls(F, orth, weights=VarPower("~ Sex"))


def test_bad_arguments_to_a_fit(orth):
    m = gls(F, orth, weights=VarFixed("~ age"))  # nothing to optimize: cheap
    with pytest.raises(ValueError, match="level must be an integer from 0 to 0"):
        m.predict(level=2)
    with pytest.raises(ValueError, match="newdata lacks column"):
        m.predict(orth.drop(columns="age"))
    with pytest.raises(TypeError, match="newdata must be a pandas DataFrame"):
        m.predict(orth.to_dict())
    with pytest.raises(ValueError, match=r"level must be a probability in \(0, 1\)"):
        m.intervals(level=1.5)
    with pytest.raises(ValueError, match="which must be"):
        m.intervals(which="random")


def test_coarser_correlation_grouping_warns():
    """As nlme: a correlation grouped above the innermost random level is moved
    to the innermost level, with a warning."""
    from mixedjax.nlme.model import build_model
    oats = mixedjax.datasets.load("oats")
    with pytest.warns(UserWarning, match="innermost random-effects grouping"):
        model = build_model("lme", "Y ~ N", oats, random="~ 1 | B/V",
                            correlation=CorAR1("~ 1 | B"))
    assert model.packing.G == 6 and model.bcor.size == 3  # lags within B/V plots


def test_single_group_is_refused(orth):
    d = orth.copy()
    d["one"] = "all"
    with pytest.raises(ValueError, match="'one' has a single level"):
        lme(F, d, "~ 1 | one")
    with pytest.raises(ValueError, match="'one' has a single level"):
        gls(F, d, correlation=CorCompSymm("~ 1 | one"))
