# make_extra_reference.R
#
# Produces tests/reference/lme4_extra_reference.json, extra lme4 reference
# values for mixedjax:
#   * "fixed_theta": lme4's profiled objective (the devfun from
#     lmer(..., devFunOnly = TRUE)) for every case in lme4_cases.tsv, for
#     REML = TRUE and REML = FALSE, evaluated at four theta vectors:
#       (a) 1 on diagonal theta elements, 0 off-diagonal (lme4's start value)
#       (b) 0.5 * theta_hat
#       (c) 1.5 * theta_hat + 0.1
#       (d) 0.3 on diagonal elements, -0.2 off-diagonal
#     plus the fitted theta_hat and objective_hat for each REML setting.
#     Diagonal positions are those with getME(m, "lower") == 0; they are
#     recorded as the boolean vector "diagonal".  Numbers are written with
#     17 significant digits (round-trip exact doubles).
#   * "extra_fits": full reference fits of additional formulas exercising
#     formula features (vector-valued random effects for a factor, I(),
#     no intercept, interactions, interaction grouping factors, ||,
#     rank-deficient X, NA rows), each with "fixed_theta" at theta (a).
#   * "versions": R / package versions used.
#
# Generated with R 4.2.2 Patched (2022-11-10 r83330), lme4 1.1.31
# (exact versions are recorded under "versions" in the JSON).
#
# Run from the repository root:
#   cd /work/main && Rscript tests/reference/make_extra_reference.R
# Data are read from mixedjax/datasets/<name>.csv; the columns listed in
# `factors` are converted with factor() (default alphabetical level order,
# treatment contrasts); all other columns are left as read.

suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

data_dir <- file.path("mixedjax", "datasets")
out_file <- file.path("tests", "reference", "lme4_extra_reference.json")
cases_file <- file.path("tests", "reference", "lme4_cases.tsv")

load_data <- function(name, factors) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")),
                stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  d
}

split_factors <- function(s) {
  s <- trimws(strsplit(s, ",", fixed = TRUE)[[1]])
  s[nzchar(s)]
}

## Record every message/warning lme4 emits, keyed by a label.
log_env <- new.env()
log_env$notes <- list()
capture <- function(label, expr) {
  withCallingHandlers(
    expr,
    warning = function(w) {
      log_env$notes[[length(log_env$notes) + 1]] <-
        list(where = label, type = "warning", text = conditionMessage(w))
      invokeRestart("muffleWarning")
    },
    message = function(m) {
      log_env$notes[[length(log_env$notes) + 1]] <-
        list(where = label, type = "message",
             text = trimws(conditionMessage(m)))
      invokeRestart("muffleMessage")
    }
  )
}
notes_for <- function(label) {
  out <- list()
  for (n in log_env$notes) if (identical(n$where, label))
    out[[length(out) + 1]] <- paste0(n$type, ": ", n$text)
  out
}

theta_start <- function(lower) ifelse(lower == 0, 1, 0)
theta_d <- function(lower) ifelse(lower == 0, 0.3, -0.2)

objective_of <- function(m) {
  if (isREML(m)) REMLcrit(m) else deviance(m)
}

rows_of <- function(mat) {
  mat <- as.matrix(mat)
  lapply(seq_len(nrow(mat)), function(i) I(unname(as.numeric(mat[i, ]))))
}

## ---------------------------------------------------------------------------
## 1. fixed_theta for every case in lme4_cases.tsv
## ---------------------------------------------------------------------------
cases <- read.delim(cases_file, stringsAsFactors = FALSE,
                    colClasses = "character")

fixed_theta <- list()
for (i in seq_len(nrow(cases))) {
  cs <- cases[i, ]
  facs <- split_factors(cs$factors)
  dat <- load_data(cs$data, facs)
  form <- as.formula(cs$formula)
  entry <- list(data = cs$data, formula = cs$formula, factors = I(facs))
  for (reml in c(TRUE, FALSE)) {
    key <- if (reml) "reml" else "ml"
    label <- paste0("fixed_theta/", cs$case, "/", key)
    m <- capture(label, lmer(form, data = dat, REML = reml))
    dev <- capture(label, lmer(form, data = dat, REML = reml,
                               devFunOnly = TRUE))
    lower <- getME(m, "lower")
    th <- getME(m, "theta")
    thetas <- list(theta_start(lower),
                   0.5 * th,
                   1.5 * th + 0.1,
                   theta_d(lower))
    obj <- vapply(thetas, function(t) capture(label, dev(t)), numeric(1))
    entry[[key]] <- list(
      thetas = lapply(thetas, function(t) I(unname(as.numeric(t)))),
      objective = I(unname(obj)),
      theta_hat = I(unname(as.numeric(th))),
      objective_hat = unname(objective_of(m)),
      diagonal = I(unname(lower == 0)),
      singular = isSingular(m),
      lme4_messages = I(as.character(unlist(notes_for(label))))
    )
  }
  fixed_theta[[cs$case]] <- entry
}

## ---------------------------------------------------------------------------
## 2. extra_fits
## ---------------------------------------------------------------------------
extra_cases <- list(
  list(case = "machines_vector", data = "machines",
       formula = "score ~ Machine + (0 + Machine | Worker)",
       reml = TRUE, factors = c("Worker", "Machine")),
  list(case = "machines_slopes_factor", data = "machines",
       formula = "score ~ Machine + (Machine | Worker)",
       reml = TRUE, factors = c("Worker", "Machine")),
  list(case = "sleepstudy_quadratic", data = "sleepstudy",
       formula = "Reaction ~ Days + I(Days^2) + (Days | Subject)",
       reml = TRUE, factors = c("Subject")),
  list(case = "sleepstudy_nointercept", data = "sleepstudy",
       formula = "Reaction ~ 0 + Days + (1 | Subject)",
       reml = FALSE, factors = c("Subject")),
  list(case = "orthodont_interaction_ml", data = "orthodont",
       formula = "distance ~ age * Sex + (1 | Subject)",
       reml = FALSE, factors = c("Subject", "Sex")),
  list(case = "pastes_interaction_group", data = "pastes",
       formula = "strength ~ 1 + (1 | batch:cask) + (1 | batch)",
       reml = TRUE, factors = c("batch", "cask")),
  list(case = "penicillin_ml", data = "penicillin",
       formula = "diameter ~ 1 + (1 | plate) + (1 | sample)",
       reml = FALSE, factors = c("plate", "sample")),
  list(case = "oats_uncorrelated_factor_free", data = "oats",
       formula = "Y ~ N + (1 | B) + (1 | B:V)",
       reml = FALSE, factors = c("B", "V", "N")),
  list(case = "sleepstudy_zerocorr_ml", data = "sleepstudy",
       formula = "Reaction ~ Days + (Days || Subject)",
       reml = FALSE, factors = c("Subject")),
  list(case = "cake_rankdef", data = "cake",
       formula = "angle ~ recipe + temp + I(2*temp) + (1 | recipe:replicate)",
       reml = TRUE, factors = c("recipe", "replicate")),
  list(case = "sleepstudy_na", data = "sleepstudy",
       formula = "Reaction ~ Days + (Days | Subject)",
       reml = TRUE, factors = c("Subject"),
       na_rows = list(Reaction = c(3L, 50L, 51L), Days = c(100L)))
)

extra_fits <- list()
for (ec in extra_cases) {
  dat <- load_data(ec$data, ec$factors)
  if (!is.null(ec$na_rows))
    for (col in names(ec$na_rows)) dat[ec$na_rows[[col]], col] <- NA
  form <- as.formula(ec$formula)
  label <- paste0("extra_fits/", ec$case)
  m <- capture(label, lmer(form, data = dat, REML = ec$reml))

  fe <- fixef(m)
  V <- as.matrix(vcov(m))
  se <- sqrt(diag(V))
  names(se) <- names(fe)

  vc <- as.data.frame(VarCorr(m))
  varcorr <- lapply(seq_len(nrow(vc)), function(j) list(
    grp = as.character(vc$grp[j]),
    var1 = as.character(vc$var1[j]),
    var2 = as.character(vc$var2[j]),
    vcov = vc$vcov[j],
    sdcor = vc$sdcor[j]))

  re <- ranef(m)
  ranef_out <- list()
  for (g in names(re)) {
    r <- re[[g]]
    ranef_out[[g]] <- list(levels = I(rownames(r)), names = I(colnames(r)),
                           values = rows_of(r))
  }

  lower <- getME(m, "lower")
  dev <- capture(label, lmer(form, data = dat, REML = ec$reml,
                             devFunOnly = TRUE))
  th_a <- theta_start(lower)

  X <- getME(m, "X")
  dropped <- attr(X, "col.dropped")
  dropped <- if (is.null(dropped)) character(0) else names(dropped)

  extra_fits[[ec$case]] <- list(
    case = ec$case,
    data = ec$data,
    formula = ec$formula,
    reml = ec$reml,
    factors = I(ec$factors),
    na_rows = lapply(ec$na_rows, I),
    nobs = nobs(m),
    ngroups = as.list(ngrps(m)),
    objective = objective_of(m),
    loglik = as.numeric(logLik(m)),
    aic = AIC(m),
    bic = BIC(m),
    sigma = sigma(m),
    theta = I(unname(as.numeric(getME(m, "theta")))),
    diagonal = I(unname(lower == 0)),
    fixef = as.list(fe),
    se = as.list(se),
    vcov = rows_of(V),
    varcorr = varcorr,
    ranef = ranef_out,
    singular = isSingular(m),
    dropped = I(dropped),
    fixed_theta = list(theta = I(unname(th_a)),
                       objective = unname(capture(label, dev(th_a)))),
    lme4_messages = I(as.character(unlist(notes_for(label))))
  )
}

## ---------------------------------------------------------------------------
## versions + write
## ---------------------------------------------------------------------------
si <- sessionInfo()
pkgver <- function(p) as.character(packageVersion(p))
versions <- list(
  R = R.version.string,
  platform = si$platform,
  running = si$running,
  lme4 = pkgver("lme4"),
  Matrix = pkgver("Matrix"),
  jsonlite = pkgver("jsonlite"),
  BLAS = if (!is.null(si$BLAS)) si$BLAS else NA_character_,
  LAPACK = if (!is.null(si$LAPACK)) si$LAPACK else NA_character_,
  generated_by = "tests/reference/make_extra_reference.R"
)

out <- list(versions = versions,
            fixed_theta = fixed_theta,
            extra_fits = extra_fits)

## jsonlite prints at most 15 significant digits, so numbers are formatted
## here with the shortest of %.15g/%.16g/%.17g that round-trips exactly and
## inserted verbatim. Length-1 vectors without I() become JSON scalars.
fmt_num <- function(v) {
  if (is.na(v) || !is.finite(v)) return("null")
  if (is.integer(v)) return(as.character(v))
  for (p in 15:17) {
    s <- sprintf(paste0("%.", p, "g"), v)
    if (as.numeric(s) == v) return(s)
  }
  s
}
exact_numbers <- function(x) {
  if (is.list(x)) {
    cls <- class(x)
    nm <- names(x)
    x <- lapply(x, exact_numbers)
    names(x) <- nm
    if (inherits(cls, "AsIs")) class(x) <- cls
    return(x)
  }
  if (is.numeric(x)) {
    s <- vapply(as.list(x), fmt_num, character(1))
    txt <- if (length(x) == 1 && !inherits(x, "AsIs")) s
           else paste0("[", paste(s, collapse = ", "), "]")
    return(structure(txt, class = "json"))
  }
  x
}

json <- toJSON(exact_numbers(out), auto_unbox = TRUE, na = "null",
               null = "null", pretty = TRUE, json_verbatim = TRUE)
writeLines(json, out_file)

for (n in log_env$notes)
  cat(sprintf("[%s] %s: %s\n", n$where, n$type, n$text))
cat("wrote", out_file, "\n")
