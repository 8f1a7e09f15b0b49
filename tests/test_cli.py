"""The command line: fits, the data-set list, and one-line errors with exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

import mixedjax
from mixedjax.cli import main


@pytest.fixture
def dyestuff_csv(tmp_path):
    path = tmp_path / "dye.csv"
    mixedjax.datasets.load("dyestuff").to_csv(path, index=False)
    return path


def run(capsys, *argv):
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_fit_csv_prints_reml_summary(capsys, dyestuff_csv):
    rc, out, err = run(capsys, "fit", str(dyestuff_csv), "Yield ~ 1 + (1 | Batch)")
    assert rc == 0 and err == ""
    # lme4: REML criterion 319.654, Batch variance 1764.05, residual 2451.25
    assert "Linear mixed model fit by REML" in out
    assert "REML criterion at convergence: 319.7" in out
    assert "1764" in out and "2451" in out
    assert "Data: dye.csv" in out


def test_fit_ml(capsys, dyestuff_csv):
    rc, out, _ = run(capsys, "fit", str(dyestuff_csv), "Yield ~ 1 + (1 | Batch)", "--ml")
    assert rc == 0
    assert "maximum likelihood" in out
    assert "327.3" in out     # lme4's deviance 327.3271


def test_fit_bundled_data_with_satterthwaite_df(capsys):
    rc, out, _ = run(capsys, "fit", "tablets", "y ~ method + (1 | tablet)",
                     "--ddf", "Satterthwaite")
    assert rc == 0
    assert "Satterthwaite" in out and "Pr(>|t|)" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("methodnir"))
    # lmerTest: estimate 0.05, df 9, t 0.535, p 0.605
    assert "9.000" in line and "0.535" in line and "0.605" in line


def test_fit_kenward_roger(capsys):
    rc, out, _ = run(capsys, "fit", "tablets", "y ~ method + (1 | tablet)", "--ddf",
                     "kenward-roger")
    assert rc == 0 and "Kenward-Roger" in out
    line = next(ln for ln in out.splitlines() if ln.strip().startswith("(Intercept)"))
    assert "12.40" in line     # pbkrtest df of the intercept: 12.4007


def test_factors_option_changes_the_model(capsys, tmp_path):
    df = mixedjax.datasets.load("tablets")
    df["tablet"] = df["tablet"].astype(int)
    df["method"] = df["method"].cat.codes          # 0 = hplc, 1 = nir, as numbers
    path = tmp_path / "tab.csv"
    df.to_csv(path, index=False)
    rc, out, _ = run(capsys, "fit", str(path), "y ~ method + (1 | tablet)",
                     "--factors", "tablet,method")
    assert rc == 0
    assert "method1" in out            # a factor: treatment-coded column
    rc, out, _ = run(capsys, "fit", str(path), "y ~ method + (1 | tablet)",
                     "--factors", "tablet")
    assert rc == 0
    assert "method1" not in out and " method " in out


def test_datasets_lists_every_bundled_set(capsys):
    rc, out, _ = run(capsys, "datasets")
    assert rc == 0
    lines = out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == mixedjax.datasets.list()
    sleep = next(ln for ln in lines if ln.startswith("sleepstudy"))
    assert "180 x 3" in sleep and "Reaction" in sleep


@pytest.mark.parametrize("argv, needle", [
    (["fit", "no_such_file.csv", "y ~ 1 + (1 | g)"], "no such file: no_such_file.csv"),
    (["fit", "no_such_data", "y ~ 1 + (1 | g)"], "not a bundled data set"),
    (["fit", "{csv}", "Yield ~ 1 + (1 | Batch"], "unbalanced parentheses"),
    (["fit", "{csv}", "Yield ~ 1 + (1 | Nope)"], "'Nope'"),
    (["fit", "{csv}", "Yield ~ x + (1 | Batch)"], "'x'"),
    (["fit", "{csv}", "Yield ~ 1"], "no random-effects term"),
    (["fit", "{csv}", "Yield ~ 1 + (1 | Batch)", "--factors", "Nope"], "--factors"),
    (["fit", "{csv}", "Yield ~ 1 + (1 | Batch)", "--ddf", "bogus"], "unknown ddf"),
    (["fit", "{csv}", "Yield ~ 1 + (1 | Batch)", "--ml", "--ddf", "KR"], "REML"),
    (["fit", "{dir}", "Yield ~ 1 + (1 | Batch)"], "directory"),
])
def test_bad_input_gives_one_line_and_status_2(capsys, dyestuff_csv, argv, needle):
    argv = [a.format(csv=dyestuff_csv, dir=dyestuff_csv.parent) for a in argv]
    rc, out, err = run(capsys, *argv)
    assert rc == 2
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mixedjax: error: ")
    assert needle in lines[0]
    assert "Traceback" not in err


def test_unreadable_csv(capsys, tmp_path):
    path = tmp_path / "broken.csv"
    path.write_text('a,b\n1,2\n"unterminated\n')
    rc, _, err = run(capsys, "fit", str(path), "a ~ 1 + (1 | b)")
    assert rc == 2 and "cannot read" in err and len(err.strip().splitlines()) == 1


def test_missing_arguments_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit"])
    assert exc.value.code == 2
    assert "required" in capsys.readouterr().err


def test_python_m_mixedjax_runs_the_sleepstudy_example():
    out = subprocess.run([sys.executable, "-m", "mixedjax"], capture_output=True, text=True,
                         check=True)
    # lme4: REML criterion 1743.6; Subject sds 24.74 and 5.92, correlation 0.07
    assert "Reaction ~ Days + (Days | Subject)" in out.stdout
    assert "REML criterion at convergence: 1743.6" in out.stdout
    assert "24.74" in out.stdout and "5.922" in out.stdout
