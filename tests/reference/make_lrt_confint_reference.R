# make_lrt_confint_reference.R
#
# Produces tests/reference/lrt_confint_reference.json: reference values for
# mixedjax's likelihood-ratio tests and confidence intervals.
#   * "ranova": lmerTest::ranova() tables (npar, logLik, AIC, LRT, Df, p) with
#     lmerTest's row names, for REML and ML fits, including a model whose only
#     random term is removed (the reduced model is then an lm).
#   * "anova_nested": lme4::anova() of three nested models given out of
#     order (REML fits, refitted with ML by anova).
#   * "profile": lme4::confint(m, method = "profile") with lme4's default
#     profile grid ("lower"/"upper") and with a fine grid (delta = cutoff/64,
#     "fine_lower"/"fine_upper"), plus the ML estimates the profile is centred
#     on; a level of 0.9 is included for one case.
#   * "wald": lme4::confint(m, method = "Wald").
#   * "percent_labels": the column labels of R's confint for several levels.
#   * "versions": R / package versions used.
# Numbers are written with 15 significant digits.
#
# Run from the repository root:
#   cd /work/main && Rscript tests/reference/make_lrt_confint_reference.R
# Data are read from mixedjax/datasets/<name>.csv; the listed columns become
# factors (alphabetical levels, treatment contrasts).

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(jsonlite)
})

data_dir <- file.path("mixedjax", "datasets")
out_file <- file.path("tests", "reference", "lrt_confint_reference.json")

load_data <- function(name, factors) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")),
                stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

na_to_null <- function(x) {
  x <- as.numeric(x)
  lapply(x, function(v) if (is.na(v)) "NA" else v)
}

## ---------------------------------------------------------------------------
## ranova
## ---------------------------------------------------------------------------
ranova_cases <- list(
  list(case = "sleepstudy_reml", data = "sleepstudy",
       formula = "Reaction ~ Days + (Days | Subject)", reml = TRUE,
       factors = "Subject"),
  list(case = "sleepstudy_ml", data = "sleepstudy",
       formula = "Reaction ~ Days + (Days | Subject)", reml = FALSE,
       factors = "Subject"),
  list(case = "penicillin", data = "penicillin",
       formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", reml = TRUE,
       factors = c("plate", "sample")),
  list(case = "pastes", data = "pastes",
       formula = "strength ~ 1 + (1 | batch/cask)", reml = TRUE,
       factors = c("batch", "cask")),
  list(case = "dyestuff", data = "dyestuff",
       formula = "Yield ~ 1 + (1 | Batch)", reml = TRUE, factors = "Batch")
)

ranova_out <- list()
for (rc in ranova_cases) {
  dat <- load_data(rc$data, rc$factors)
  m <- lmerTest::lmer(as.formula(rc$formula), data = dat, REML = rc$reml)
  tab <- ranova(m)
  ranova_out[[rc$case]] <- list(
    data = rc$data, formula = rc$formula, reml = rc$reml,
    factors = I(rc$factors), rows = I(rownames(tab)),
    npar = I(tab$npar), logLik = I(tab$logLik), AIC = I(tab$AIC),
    LRT = na_to_null(tab$LRT), Df = na_to_null(tab$Df),
    p = na_to_null(tab[["Pr(>Chisq)"]]))
}

## ---------------------------------------------------------------------------
## anova of three nested models (REML fits, refitted with ML)
## ---------------------------------------------------------------------------
sleep <- load_data("sleepstudy", "Subject")
mA <- lme4::lmer(Reaction ~ Days + (Days | Subject), sleep)
mB <- lme4::lmer(Reaction ~ Days + (1 | Subject), sleep)
mC <- lme4::lmer(Reaction ~ Days + (Days || Subject), sleep)
nested <- suppressMessages(anova(mA, mB, mC))
anova_nested <- list(
  call = "anova(mA, mB, mC) with mA = Days + (Days|Subject), mB = Days + (1|Subject), mC = Days + (Days||Subject), REML fits",
  formulas = list(mA = "Reaction ~ Days + (Days | Subject)",
                  mB = "Reaction ~ Days + (1 | Subject)",
                  mC = "Reaction ~ Days + (Days || Subject)"),
  models = I(rownames(nested)), npar = I(nested$npar), AIC = I(nested$AIC),
  BIC = I(nested$BIC), logLik = I(nested$logLik),
  deviance = I(nested$deviance), Chisq = na_to_null(nested$Chisq),
  Df = na_to_null(nested$Df), p = na_to_null(nested[["Pr(>Chisq)"]]))

## ---------------------------------------------------------------------------
## profile and Wald intervals
## ---------------------------------------------------------------------------
profile_cases <- list(
  list(case = "penicillin", data = "penicillin",
       formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", reml = TRUE,
       factors = c("plate", "sample"), level = 0.95),
  list(case = "dyestuff", data = "dyestuff",
       formula = "Yield ~ 1 + (1 | Batch)", reml = TRUE, factors = "Batch",
       level = 0.95),
  list(case = "dyestuff_90", data = "dyestuff",
       formula = "Yield ~ 1 + (1 | Batch)", reml = TRUE, factors = "Batch",
       level = 0.90),
  list(case = "dyestuff2_singular", data = "dyestuff2",
       formula = "Yield ~ 1 + (1 | Batch)", reml = TRUE, factors = "Batch",
       level = 0.95),
  list(case = "sleepstudy_ml", data = "sleepstudy",
       formula = "Reaction ~ Days + (Days | Subject)", reml = FALSE,
       factors = "Subject", level = 0.95),
  list(case = "machines_slopes", data = "machines",
       formula = "score ~ Machine + (Machine | Worker)", reml = TRUE,
       factors = c("Worker", "Machine"), level = 0.95)
)

profile_out <- list()
for (pc in profile_cases) {
  dat <- load_data(pc$data, pc$factors)
  m <- lme4::lmer(as.formula(pc$formula), data = dat, REML = pc$reml)
  mml <- if (pc$reml) refitML(m) else m
  msgs <- character(0)
  keep <- function(expr) withCallingHandlers(expr,
    warning = function(w) {
      msgs <<- c(msgs, conditionMessage(w)); invokeRestart("muffleWarning")
    })
  ci <- keep(confint(m, method = "profile", level = pc$level,
                     oldNames = FALSE))
  cutoff <- sqrt(qchisq(pc$level, 1))
  pr <- keep(profile(m, delta = cutoff / 64, maxpts = 400,
                     signames = FALSE))
  fine <- keep(confint(pr, level = pc$level))
  vc <- as.data.frame(VarCorr(mml), order = "lower.tri")
  profile_out[[pc$case]] <- list(
    data = pc$data, formula = pc$formula, reml = pc$reml,
    factors = I(pc$factors), level = pc$level, names = I(rownames(ci)),
    lower = na_to_null(ci[, 1]), upper = na_to_null(ci[, 2]),
    fine_lower = na_to_null(fine[, 1]), fine_upper = na_to_null(fine[, 2]),
    ml_sdcor = I(vc$sdcor), ml_fixef = I(unname(fixef(mml))),
    ml_deviance = deviance(mml), warnings = I(unique(msgs)))
}

tablets <- load_data("tablets", c("tablet", "method"))
mt <- lme4::lmer(y ~ method + (1 | tablet), tablets)
wald_t <- confint(mt, method = "Wald", level = 0.9, oldNames = FALSE)
wald_out <- list(tablets_90 = list(
  data = "tablets", formula = "y ~ method + (1 | tablet)", reml = TRUE,
  factors = I(c("tablet", "method")), level = 0.9, names = I(rownames(wald_t)),
  columns = I(colnames(wald_t)),
  lower = na_to_null(wald_t[, 1]), upper = na_to_null(wald_t[, 2])))

## Column labels R's confint gives for several levels (stats:::format_perc).
levels <- c(0.5, 0.68, 0.8, 0.9, 0.95, 0.99, 0.999, 0.9999)
labels <- lapply(levels, function(l)
  I(colnames(confint(lm(y ~ 1, data.frame(y = c(1, 2, 4))), level = l))))

out <- list(
  percent_labels = list(levels = I(levels), labels = labels),
  ranova = ranova_out,
  anova_nested = anova_nested,
  profile = profile_out,
  wald = wald_out,
  versions = list(R = R.version.string,
                  lme4 = as.character(packageVersion("lme4")),
                  lmerTest = as.character(packageVersion("lmerTest"))))
writeLines(toJSON(out, auto_unbox = TRUE, digits = 15, pretty = TRUE),
           out_file)
cat("wrote", out_file, "\n")
