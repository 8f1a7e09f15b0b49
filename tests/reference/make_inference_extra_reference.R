# make_inference_extra_reference.R
#
# Produces tests/reference/inference_extra_reference.json: lmerTest / pbkrtest
# reference values for mixedjax.inference beyond lme4_reference.json:
#   * "anova": type I, II and III F tests (lmerTest::anova, Satterthwaite and
#     Kenward-Roger) for a balanced split-plot (oats), the same data made
#     unbalanced by deleting six responses, a factor-by-covariate interaction
#     (cake), an additive factor + covariate model (orthodont), a missing cell
#     (rank-deficient X) and interactions without their main effects.  Each case also
#     records lme4's theta and sigma, so tests can compare at lme4's estimates.
#   * "means": marginal means and pairwise differences with Satterthwaite or
#     Kenward-Roger df from lmerTest::ls_means (equal weights over the other
#     factors, covariates at their means, as emmeans), with the pairwise p-values
#     adjusted by base R's p.adjust (Bonferroni, Holm) and ptukey (Tukey), within
#     each "by" group.  A "by" case takes the cell means of V:N from ls_means and
#     forms the differences within each level of V with lmerTest::contest.
#   * "contrast": lmerTest::contest of a 2-row and a 1-row (with rhs) contrast,
#     joint F tests and, for one row, the t test.
#   * "ml_satterthwaite_coef": lmerTest's coefficient table of an ML fit.
#
# Run from the repository root:
#   Rscript tests/reference/make_inference_extra_reference.R
# Data are read from mixedjax/datasets/<name>.csv; `factors` are converted with
# factor() (alphabetical levels, treatment contrasts); `na_rows` (1-based) of the
# response are set to NA; `drop_rows` (1-based) are removed.

suppressPackageStartupMessages({
  library(lmerTest)
  library(jsonlite)
})

data_dir <- file.path("mixedjax", "datasets")
out_file <- file.path("tests", "reference", "inference_extra_reference.json")

load_data <- function(name, factors, na_rows = NULL, response = NULL, drop_rows = NULL) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  if (length(na_rows)) d[[response]][na_rows] <- NA
  if (length(drop_rows)) d <- d[-drop_rows, ]
  d
}

oats_raw <- read.csv(file.path(data_dir, "oats.csv"), stringsAsFactors = FALSE)
missing_cell <- which(oats_raw$V == "Victory" & oats_raw$N == "0.6cwt")

cases <- list(
  oats = list(data = "oats", formula = "Y ~ V * N + (1 | B/V)", factors = c("B", "V", "N")),
  oats_unbalanced = list(data = "oats", formula = "Y ~ V * N + (1 | B/V)",
                         factors = c("B", "V", "N"), response = "Y",
                         na_rows = c(2, 9, 23, 40, 58, 66)),
  cake = list(data = "cake", formula = "angle ~ recipe * temp + (1 | recipe:replicate)",
              factors = c("recipe", "replicate")),
  orthodont = list(data = "orthodont", formula = "distance ~ age + Sex + (age | Subject)",
                   factors = c("Subject", "Sex")),
  # A missing cell: X is rank deficient (lme4 drops VVictory:N0.6cwt).
  oats_missing_cell = list(data = "oats", formula = "Y ~ V * N + (1 | B/V)",
                           factors = c("B", "V", "N"), drop_rows = missing_cell),
  # Interactions without their margins: R's terms() codes V (resp. recipe) by dummies
  # there, so V is not "contained" in V:N for lmerTest's type II/III.
  oats_nested_fixed = list(data = "oats", formula = "Y ~ V + V:N + (1 | B/V)",
                           factors = c("B", "V", "N")),
  cake_no_main = list(data = "cake", formula = "angle ~ temp + recipe:temp + (1 | recipe:replicate)",
                      factors = c("recipe", "replicate"))
)

fit_case <- function(cs) {
  d <- load_data(cs$data, cs$factors, cs$na_rows, cs$response, cs$drop_rows)
  lmer(as.formula(cs$formula), data = d, REML = TRUE)
}

anova_json <- function(tab) {
  list(terms = rownames(tab), SumSq = tab[["Sum Sq"]], MeanSq = tab[["Mean Sq"]],
       F = tab[["F value"]], numdf = tab[["NumDF"]], dendf = tab[["DenDF"]],
       p = tab[["Pr(>F)"]])
}

anova_out <- list()
models <- list()
for (nm in names(cases)) {
  cs <- cases[[nm]]
  m <- fit_case(cs)
  models[[nm]] <- m
  types <- list()
  for (type in c("1", "2", "3")) {
    types[[type]] <- list(
      Satterthwaite = anova_json(anova(m, type = as.integer(type), ddf = "Satterthwaite")),
      KenwardRoger = anova_json(anova(m, type = as.integer(type), ddf = "Kenward-Roger")))
  }
  anova_out[[nm]] <- c(cs, list(theta = I(unname(getME(m, "theta"))), sigma = sigma(m),
                                types = types))
}

## Marginal means and pairwise differences --------------------------------------
adjust_p <- function(p, t, df, k, method) {
  if (method == "tukey") ptukey(abs(t) * sqrt(2), nmeans = k, df = df, lower.tail = FALSE)
  else p.adjust(p, method = method)
}

means_case <- function(case, spec, ddf, adjusts) {
  m <- models[[case]]
  lsm <- ls_means(m, which = spec, ddf = ddf)
  dif <- ls_means(m, which = spec, ddf = ddf, pairwise = TRUE)
  k <- nrow(lsm)
  levels <- sub(paste0("^", spec), "", rownames(lsm))
  p_adj <- lapply(setNames(adjusts, adjusts), function(a)
    adjust_p(dif[["Pr(>|t|)"]], dif[["t value"]], dif[["df"]], k, a))
  list(case = case, specs = spec, by = NULL, ddf = ddf, levels = levels,
       emmean = lsm$Estimate, SE = lsm[["Std. Error"]], df = lsm$df,
       lower = lsm$lower, upper = lsm$upper,
       contrasts = gsub(paste0("(^| )", spec), "\\1", rownames(dif)),
       estimate = dif$Estimate, cSE = dif[["Std. Error"]], cdf = dif$df,
       t = dif[["t value"]], p_adjusted = p_adj)
}

## emmeans(m, ~ N | V): cell means of V:N, differences of N levels within each V.
means_by_case <- function(case, ddf, adjusts) {
  m <- models[[case]]
  cells <- ls_means(m, which = "V:N", ddf = ddf)
  Lc <- show_tests(cells)[["V:N"]]
  labs <- do.call(rbind, strsplit(sub("^V:N *", "", rownames(Lc)), ":", fixed = TRUE))
  labs[, 1] <- sub("^V", "", labs[, 1])
  labs[, 2] <- sub("^N", "", labs[, 2])
  vlev <- unique(labs[, 1])
  out <- list(case = case, specs = "N", by = "V", ddf = ddf, levels = labs[, 2],
              by_levels = labs[, 1], emmean = cells$Estimate, SE = cells[["Std. Error"]],
              df = cells$df, lower = cells$lower, upper = cells$upper)
  con <- list(contrasts = character(0), by_levels = character(0), estimate = numeric(0),
              cSE = numeric(0), cdf = numeric(0), t = numeric(0))
  padj <- setNames(lapply(adjusts, function(a) numeric(0)), adjusts)
  for (v in vlev) {
    rows <- which(labs[, 1] == v)
    prs <- combn(rows, 2)
    L <- t(apply(prs, 2, function(ij) Lc[ij[1], ] - Lc[ij[2], ]))
    res <- contest(m, L, joint = FALSE, ddf = ddf)
    con$contrasts <- c(con$contrasts, paste(labs[prs[1, ], 2], "-", labs[prs[2, ], 2]))
    con$by_levels <- c(con$by_levels, rep(v, ncol(prs)))
    con$estimate <- c(con$estimate, res$Estimate)
    con$cSE <- c(con$cSE, res[["Std. Error"]])
    con$cdf <- c(con$cdf, res$df)
    con$t <- c(con$t, res[["t value"]])
    for (a in adjusts)
      padj[[a]] <- c(padj[[a]], adjust_p(res[["Pr(>|t|)"]], res[["t value"]], res$df,
                                         length(rows), a))
  }
  names(con)[names(con) == "by_levels"] <- "contrast_by_levels"
  c(out, con, list(p_adjusted = padj))
}

adjusts <- c("tukey", "bonferroni", "holm", "none")
means_out <- list(
  oats_V_satterthwaite = means_case("oats", "V", "Satterthwaite", adjusts),
  oats_unbalanced_N_satterthwaite = means_case("oats_unbalanced", "N", "Satterthwaite", adjusts),
  oats_unbalanced_N_kenwardroger = means_case("oats_unbalanced", "N", "Kenward-Roger", adjusts),
  cake_recipe_satterthwaite = means_case("cake", "recipe", "Satterthwaite", adjusts),
  oats_unbalanced_N_by_V_satterthwaite = means_by_case("oats_unbalanced", "Satterthwaite",
                                                       adjusts)
)

## Custom contrasts ----------------------------------------------------------------
m <- models[["oats_unbalanced"]]
beta_names <- names(fixef(m))
L2 <- matrix(0, 2, length(beta_names), dimnames = list(NULL, beta_names))
L2[1, c("N0.2cwt", "N0.4cwt", "N0.6cwt")] <- c(-1, 0, 1)
L2[2, c("VMarvellous", "VVictory")] <- c(1, -1)
L1 <- matrix(0, 1, length(beta_names), dimnames = list(NULL, beta_names))
L1[1, c("(Intercept)", "N0.6cwt")] <- c(1, 1)
contest_json <- function(L, rhs, ddf) {
  joint <- contest(m, L, rhs = rhs, joint = TRUE, ddf = ddf)
  res <- list(L = unname(L), rhs = rhs, ddf = ddf, joint = as.list(joint))
  if (nrow(L) == 1)
    res$t <- as.list(contest(m, L, rhs = rhs, joint = FALSE, ddf = ddf))
  res
}
contrast_out <- list(
  two_rows_satterthwaite = contest_json(L2, 0, "Satterthwaite"),
  two_rows_kenwardroger = contest_json(L2, 0, "Kenward-Roger"),
  one_row_rhs_satterthwaite = contest_json(L1, 120, "Satterthwaite"),
  one_row_rhs_kenwardroger = contest_json(L1, 120, "Kenward-Roger")
)
contrast_out <- c(list(case = "oats_unbalanced", names = beta_names), contrast_out)

## Satterthwaite for an ML fit (lmerTest differentiates -2 log L) ------------------
ss <- load_data("sleepstudy", "Subject")
ml <- lmer(Reaction ~ Days + (Days | Subject), ss, REML = FALSE)
cm <- summary(ml)$coefficients
ml_out <- list(data = "sleepstudy", formula = "Reaction ~ Days + (Days | Subject)",
               factors = I("Subject"), reml = FALSE, theta = I(unname(getME(ml, "theta"))),
               names = rownames(cm), df = cm[, "df"], t = cm[, "t value"],
               p = cm[, "Pr(>|t|)"])

versions <- list(R = R.version.string, lme4 = as.character(packageVersion("lme4")),
                 lmerTest = as.character(packageVersion("lmerTest")),
                 pbkrtest = as.character(packageVersion("pbkrtest")))
out <- list(versions = versions, anova = anova_out, means = means_out,
            contrast = contrast_out, ml_satterthwaite_coef = ml_out)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE, null = "null"),
           out_file)
cat("wrote", out_file, "\n")
