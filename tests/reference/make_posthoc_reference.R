# make_posthoc_reference.R
#
# Produces tests/reference/posthoc_reference.json: what R users read off a fitted
# lmer model after the fit, for mixedjax's post-fit methods:
#   * "coef": lme4's coef(m), per grouping factor (levels, columns, values);
#   * "rePCA": lme4's rePCA(m): per grouping factor the singular values of the
#     block-diagonal relative covariance factor (sdev) and their share of the sum
#     of squares (proportion, cumulative; unrounded, summary.prcomp rounds them);
#   * "r2", "icc", "variance": performance::r2_nakagawa, performance::icc and
#     insight::get_variance (var.fixed, var.random, var.residual) with their
#     default tolerance (1e-5), and for singular fits also with tolerance = 0;
#   * "johnson": the random-effect variance of Johnson (2014) computed here from
#     every term's own model matrix (getME(m, "mmList")) and VarCorr:
#     sum over terms of mean_i z_i' Sigma_t z_i, with the R2s and ICCs built on it.
#     It equals insight's var.random when every random-effect column is a column
#     of X and every grouping factor has one term (asserted below); insight counts
#     only the first term of a grouping factor with several terms and drops
#     random-effect columns absent from X;
#   * "tidy_*", "glance": broom.mixed's tidy() and glance() of the lmerTest fit
#     (Satterthwaite df and p-values, t-based Wald intervals), of the plain lme4
#     fit ("tidy_lme4_ci": no df, normal Wald intervals), with Kenward-Roger df
#     ("tidy_kr"), and the conditional modes ("tidy_ran_vals") and per-level
#     coefficients ("tidy_ran_coefs").
#
# Run from the repository root:
#   Rscript tests/reference/make_posthoc_reference.R
# Data are read from mixedjax/datasets/<name>.csv; `factors` are converted with
# factor() (alphabetical levels, treatment contrasts), as mixedjax.datasets.load.

suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(performance)
  library(broom.mixed)
  library(jsonlite)
})

data_dir <- file.path("mixedjax", "datasets")
out_file <- file.path("tests", "reference", "posthoc_reference.json")

load_data <- function(name, factors) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

cases <- list(
  sleepstudy = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)",
                    factors = "Subject", reml = TRUE, kr = TRUE),
  sleepstudy_ml = list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)",
                       factors = "Subject", reml = FALSE),
  sleepstudy_two_terms = list(data = "sleepstudy",
                              formula = "Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)",
                              factors = "Subject", reml = TRUE),
  penicillin = list(data = "penicillin", formula = "diameter ~ 1 + (1 | plate) + (1 | sample)",
                    factors = c("plate", "sample"), reml = TRUE),
  pastes = list(data = "pastes", formula = "strength ~ 1 + (1 | batch/cask)",
                factors = c("batch", "cask"), reml = TRUE),
  machines = list(data = "machines", formula = "score ~ Machine + (0 + Machine | Worker)",
                  factors = c("Worker", "Machine"), reml = TRUE),
  dyestuff2 = list(data = "dyestuff2", formula = "Yield ~ 1 + (1 | Batch)",
                   factors = "Batch", reml = TRUE)
)

frame <- function(df) as.list(as.data.frame(df, stringsAsFactors = FALSE))

coef_ref <- function(m) {
  lapply(coef(m), function(df) list(levels = rownames(df), columns = colnames(df),
                                    values = unname(as.list(df))))
}

repca_ref <- function(m) {
  lapply(rePCA(m), function(p) {
    v <- p$sdev^2
    list(sdev = p$sdev, proportion = v / sum(v), cumulative = cumsum(v) / sum(v))
  })
}

johnson_ref <- function(m) {
  vc <- VarCorr(m)
  mm <- getME(m, "mmList")
  stopifnot(length(vc) == length(mm))
  var_random <- sum(mapply(function(Sigma, Z) mean(rowSums((Z %*% Sigma) * Z)), vc, mm))
  var_fixed <- var(as.vector(getME(m, "X") %*% fixef(m)))
  var_resid <- sigma(m)^2
  total <- var_fixed + var_random + var_resid
  list(var_fixed = var_fixed, var_random = var_random, var_residual = var_resid,
       R2_conditional = (var_fixed + var_random) / total, R2_marginal = var_fixed / total,
       ICC_adjusted = var_random / (var_random + var_resid),
       ICC_conditional = var_random / total)
}

performance_ref <- function(m, tolerance) {
  r2 <- suppressWarnings(r2_nakagawa(m, tolerance = tolerance))
  ic <- suppressWarnings(icc(m, tolerance = tolerance))
  vars <- suppressWarnings(insight::get_variance(m, tolerance = tolerance))
  na1 <- function(x) if (is.null(x) || length(x) == 0) NA else unname(x[[1]])
  list(R2_conditional = na1(r2$R2_conditional), R2_marginal = na1(r2$R2_marginal),
       ICC_adjusted = if (is.data.frame(ic)) ic$ICC_adjusted else NA,
       ICC_conditional = if (is.data.frame(ic)) ic$ICC_conditional else NA,
       var_fixed = na1(vars$var.fixed), var_random = na1(vars$var.random),
       var_residual = na1(vars$var.residual))
}

out <- lapply(cases, function(cs) {
  d <- load_data(cs$data, cs$factors)
  f <- as.formula(cs$formula)
  m <- lmerTest::lmer(f, d, REML = cs$reml)
  m4 <- lme4::lmer(f, d, REML = cs$reml)
  res <- c(cs, list(theta = unname(getME(m, "theta")), sigma = sigma(m),
                    objective = if (cs$reml) REMLcrit(m) else deviance(m),
                    singular = isSingular(m)))
  res$coef <- coef_ref(m)
  res$rePCA <- repca_ref(m)
  res$performance <- performance_ref(m, 1e-5)
  if (isSingular(m)) res$performance_tol0 <- performance_ref(m, 0)
  res$johnson <- johnson_ref(m)
  if (!isSingular(m) && cs$data != "machines" && cs$formula != cases$sleepstudy_two_terms$formula) {
    stopifnot(isTRUE(all.equal(res$johnson$var_random, res$performance$var_random,
                               tolerance = 1e-12)))
  }
  res$tidy <- frame(tidy(m))
  res$tidy_ci <- frame(tidy(m, conf.int = TRUE, conf.level = 0.9))
  res$tidy_lme4_ci <- frame(tidy(m4, conf.int = TRUE))
  res$tidy_ran_vals <- frame(tidy(m, effects = "ran_vals", conf.int = TRUE))
  res$tidy_ran_coefs <- frame(tidy(m, effects = "ran_coefs"))
  if (isTRUE(cs$kr)) res$tidy_kr <- frame(tidy(m, ddf.method = "Kenward-Roger"))
  res$glance <- frame(suppressWarnings(glance(m)))
  res
})

out$versions <- list(R = R.version.string,
                     lme4 = as.character(packageVersion("lme4")),
                     lmerTest = as.character(packageVersion("lmerTest")),
                     performance = as.character(packageVersion("performance")),
                     insight = as.character(packageVersion("insight")),
                     broom.mixed = as.character(packageVersion("broom.mixed")))
write(toJSON(out, auto_unbox = TRUE, digits = NA, na = "null", pretty = TRUE), out_file)
