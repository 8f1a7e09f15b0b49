# make_nlme_extra_reference.R
#
# Produces tests/reference/nlme_extra_reference.json: reference fits from R's
# nlme for the variance functions and correlation structures that
# nlme_reference.json does not cover (varPower on a covariate and on fitted
# values, varExp, varFixed, stratified varPower, corCAR1,
# corCompSymm in lme (with a fixed value), corSymm, gls with varIdent, ML fits,
# nested random effects with a correlation structure), plus, for every case,
# the fixed-effects DF, p-values, random-effect standard deviations and
# correlations, BLUPs, standardized residual quantiles and nlme's approximate
# confidence intervals (intervals()).  "corsymm_matrix" holds corSymm's
# correlation matrix at given unconstrained coefficients.
#
# Run from the repository root:
#   cd /work/main && Rscript tests/reference/make_nlme_extra_reference.R
# Data are read from mixedjax/datasets/<name>.csv with factor() (alphabetical
# levels), except Orthodont's Sex, whose levels are c("Male", "Female") as in
# nlme's own Orthodont data (and as in nlme_reference.json).

suppressPackageStartupMessages({
  library(nlme)
  library(jsonlite)
})

data_dir <- file.path("mixedjax", "datasets")
out_file <- file.path("tests", "reference", "nlme_extra_reference.json")

load_data <- function(name, factors) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  if (name == "orthodont") d$Sex <- factor(d$Sex, levels = c("Male", "Female"))
  d
}

orthodont <- load_data("orthodont", c("Subject"))
ovary <- load_data("ovary", c("Mare"))
oats <- load_data("oats", c("B", "V", "N"))

named <- function(x) as.list(x)

restruct_info <- function(m) {
  if (!inherits(m, "lme")) return(list())
  out <- list()
  reSt <- m$modelStruct$reStruct
  for (lev in names(reSt)) {
    S <- as.matrix(reSt[[lev]]) * m$sigma^2
    sds <- sqrt(diag(S))
    C <- cov2cor(S)
    out[[lev]] <- list(names = colnames(S), sd = unname(sds),
                       corr = unname(C[lower.tri(C)]))
  }
  out
}

ranef_info <- function(m) {
  if (!inherits(m, "lme")) return(list())
  re <- ranef(m)
  if (is.data.frame(re)) re <- setNames(list(re), names(m$modelStruct$reStruct))
  lapply(re, function(df) list(levels = rownames(df), columns = colnames(df),
                               values = unname(as.matrix(df))))
}

intervals_info <- function(m) {
  iv <- tryCatch(intervals(m), error = function(e) NULL)
  if (is.null(iv)) return(NULL)
  tab <- function(x) list(names = rownames(x), lower = unname(x[, 1]),
                          est = unname(x[, 2]), upper = unname(x[, 3]))
  out <- list(fixed = tab(if (inherits(m, "lme")) iv$fixed else iv$coef))
  if (!is.null(iv$reStruct)) out$reStruct <- lapply(iv$reStruct, tab)
  if (!is.null(iv$corStruct)) out$corStruct <- tab(iv$corStruct)
  if (!is.null(iv$varStruct)) out$varStruct <- tab(iv$varStruct)
  out$sigma <- unname(as.numeric(iv$sigma))
  out
}

describe <- function(case, call, m, data, newdata_rows = 1:6) {
  ms <- m$modelStruct
  vs <- if (is.null(ms$varStruct)) list() else named(coef(ms$varStruct, unconstrained = FALSE))
  cs <- if (is.null(ms$corStruct)) list() else named(coef(ms$corStruct, unconstrained = FALSE))
  tt <- summary(m)$tTable
  is_lme <- inherits(m, "lme")
  df <- if (is_lme) tt[, "DF"] else rep(m$dims$N - m$dims$p, nrow(tt))
  nd <- data[newdata_rows, , drop = FALSE]
  pr <- if (is_lme) predict(m, nd, level = 0:length(ms$reStruct)) else predict(m, nd)
  list(case = case, call = call, method = m$method,
       loglik = as.numeric(logLik(m)), aic = AIC(m), bic = BIC(m), sigma = m$sigma,
       fixef = named(if (is_lme) fixef(m) else coef(m)),
       se = named(sqrt(diag(m$varFix %||% m$varBeta))),
       df = named(setNames(df, rownames(tt))),
       pvalue = named(setNames(tt[, ncol(tt)], rownames(tt))),
       varstruct = vs, corstruct = cs,
       restruct = restruct_info(m), ranef = ranef_info(m),
       resid_quantiles = unname(quantile(resid(m, type = "pearson"))),
       fitted_head = unname(fitted(m)[newdata_rows]),
       predict_head = if (is_lme) lapply(as.list(pr[, -seq_along(ms$reStruct), drop = FALSE]),
                                          unname) else list(unname(pr)),
       intervals = intervals_info(m))
}
`%||%` <- function(a, b) if (is.null(a)) b else a

cases <- list()
add <- function(case, call, m, data) cases[[case]] <<- describe(case, call, m, data)

m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = orthodont,
         weights = varIdent(form = ~1 | Sex))
add("orthodont_varident", "lme(distance ~ age + Sex, random = ~1|Subject, weights = varIdent(form = ~1|Sex), REML)", m, orthodont)

m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = orthodont,
         weights = varPower(form = ~age))
add("orthodont_varpower", "lme(distance ~ age + Sex, random = ~1|Subject, weights = varPower(form = ~age), REML)", m, orthodont)

m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = orthodont,
         weights = varExp(form = ~age))
add("orthodont_varexp", "lme(distance ~ age + Sex, random = ~1|Subject, weights = varExp(form = ~age), REML)", m, orthodont)

# varPower of the fitted values: nlme alternates fits with the covariate held at
# the previous fit's fitted values, but its stopping test compares successive
# nlminb solutions, which barely move from a warm start long before the
# alternation has reached its fixed point.  The reference continues nlme's own
# alternation (covariate f = fitted values, refit) until it has settled, and
# records that fixed point (the fit of the last alternation).
m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = orthodont,
         weights = varPower(), control = lmeControl(tolerance = 1e-10))
ofit <- orthodont
ofit$f <- fitted(m)
for (i in 1:60) {
  m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = ofit,
           weights = varPower(form = ~f),
           control = lmeControl(msTol = 1e-14, tolerance = 1e-12))
  ofit$f <- fitted(m)
}
add("orthodont_varpower_fitted", "lme(distance ~ age + Sex, random = ~1|Subject, weights = varPower(form = ~fitted(.)), REML), alternated to its fixed point", m, ofit)

m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = orthodont,
         weights = varPower(form = ~age | Sex))
add("orthodont_varpower_strata", "lme(distance ~ age + Sex, random = ~1|Subject, weights = varPower(form = ~age|Sex), REML)", m, orthodont)

m <- lme(follicles ~ s1 + c1, random = ~1 | Mare, data = ovary,
         correlation = corCAR1(form = ~Time | Mare))
add("ovary_car1", "lme(follicles ~ s1 + c1, random = ~1|Mare, correlation = corCAR1(form = ~Time|Mare), REML)", m, ovary)

m <- lme(distance ~ age + Sex, random = ~1 | Subject, data = orthodont,
         correlation = corCompSymm(value = 0.3, form = ~1 | Subject, fixed = TRUE))
add("orthodont_lme_cs_fixed", "lme(distance ~ age + Sex, random = ~1|Subject, correlation = corCompSymm(0.3, form = ~1|Subject, fixed = TRUE), REML)", m, orthodont)

m <- gls(distance ~ age + Sex, data = orthodont,
         correlation = corSymm(form = ~1 | Subject), weights = varIdent(form = ~1 | age))
add("orthodont_gls_corsymm", "gls(distance ~ age + Sex, correlation = corSymm(form = ~1|Subject), weights = varIdent(form = ~1|age), REML)", m, orthodont)

# AR(1) in integer times with gaps: t = age / 2, and the age-10 visits of the
# first five subjects (F01-F05) dropped, so some lags are 2 (nlme's corARMA(1, 0)).
ogap <- orthodont[!(orthodont$Subject %in% c("F01", "F02", "F03", "F04", "F05") &
                    orthodont$age == 10), ]
ogap$t <- ogap$age / 2
m <- gls(distance ~ age + Sex, data = ogap, correlation = corAR1(form = ~t | Subject))
add("orthodont_gls_ar1_gaps", "gls(distance ~ age + Sex, correlation = corAR1(form = ~t|Subject), REML) on Orthodont without the age-10 visits of F01-F05, t = age/2", m, ogap)

m <- gls(distance ~ age + Sex, data = orthodont, weights = varIdent(form = ~1 | Sex))
add("orthodont_gls_varident", "gls(distance ~ age + Sex, weights = varIdent(form = ~1|Sex), REML)", m, orthodont)

m <- gls(distance ~ age + Sex, data = orthodont, weights = varFixed(~age), method = "ML")
add("orthodont_gls_varfixed_ml", "gls(distance ~ age + Sex, weights = varFixed(~age), ML)", m, orthodont)

m <- lme(distance ~ age + Sex, random = ~age | Subject, data = orthodont,
         correlation = corAR1(form = ~1 | Subject), method = "ML")
add("orthodont_ml_slope_ar1", "lme(distance ~ age + Sex, random = ~age|Subject, correlation = corAR1(form = ~1|Subject), ML)", m, orthodont)

m <- lme(Y ~ N, random = ~1 | B/V, data = oats, correlation = corAR1(form = ~1 | B/V))
add("oats_nested_ar1", "lme(Y ~ N, random = ~1|B/V, correlation = corAR1(form = ~1|B/V), REML)", m, oats)

m <- lme(follicles ~ s1 + c1, random = ~1 | Mare, data = ovary,
         correlation = corAR1(form = ~1 | Mare))
add("ovary_ar1", "lme(follicles ~ s1 + c1, random = ~1|Mare, correlation = corAR1(form = ~1|Mare), REML)", m, ovary)

m <- gls(distance ~ age + Sex, data = orthodont, correlation = corCompSymm(form = ~1 | Subject))
add("orthodont_gls_cs", "gls(distance ~ age + Sex, correlation = corCompSymm(form = ~1|Subject), REML)", m, orthodont)

cs <- Initialize(corSymm(form = ~1 | Subject), data = orthodont)
unc <- c(0.1, -0.2, 0.3, 0.4, -0.5, 0.6)
coef(cs) <- unc
corsymm_matrix <- list(unconstrained = unc, matrix = unname(corMatrix(cs)[[1]]),
                       corr = unname(coef(cs, unconstrained = FALSE)))

versions <- list(R = R.version.string, nlme = as.character(packageVersion("nlme")))
writeLines(toJSON(list(cases = cases, corsymm_matrix = corsymm_matrix, versions = versions),
                  auto_unbox = TRUE, digits = NA, pretty = TRUE, null = "null"), out_file)
cat("wrote", out_file, "\n")
