# make_nlme_anova_reference.R
#
# Produces tests/reference/nlme_anova_reference.json: nlme's likelihood-ratio
# tables anova(fit1, fit2, ...) for lme and gls fits (REML fits with the same
# fixed effects, ML fits with different fixed effects, lme and gls mixed),
# nlme's sequential F tests anova(fit) of single lme and gls fits, and R's
# AIC(...) / BIC(...) tables across lmer, lme and gls fits.
#
# Run from the repository root:
#   cd /work/main && Rscript tests/reference/make_nlme_anova_reference.R
# Data are read from mixedjax/datasets/<name>.csv with factor() (alphabetical
# levels), except Orthodont's Sex, whose levels are c("Male", "Female") as in
# nlme's own Orthodont data.

suppressPackageStartupMessages({
  library(nlme)
  library(lme4)
  library(jsonlite)
})

data_dir <- file.path("mixedjax", "datasets")
out_file <- file.path("tests", "reference", "nlme_anova_reference.json")

load_data <- function(name, factors) {
  d <- read.csv(file.path(data_dir, paste0(name, ".csv")), stringsAsFactors = FALSE)
  for (f in factors) d[[f]] <- factor(d[[f]])
  if (name == "orthodont") d$Sex <- factor(d$Sex, levels = c("Male", "Female"))
  d
}

orthodont <- load_data("orthodont", c("Subject"))
ovary <- load_data("ovary", c("Mare"))
sleepstudy <- load_data("sleepstudy", c("Subject"))
oats <- load_data("oats", c("B", "V", "N"))

fits <- list(
  ortho_slope = lme(distance ~ age, data = orthodont, random = ~ age | Subject),
  ortho_ri = lme(distance ~ age, data = orthodont, random = ~ 1 | Subject),
  ortho_ri_ml = lme(distance ~ age, data = orthodont, random = ~ 1 | Subject, method = "ML"),
  ortho_sex_ml = lme(distance ~ age + Sex, data = orthodont, random = ~ 1 | Subject,
                     method = "ML"),
  ortho_inter_ml = lme(distance ~ age * Sex, data = orthodont, random = ~ 1 | Subject,
                       method = "ML"),
  ortho_sex = lme(distance ~ age + Sex, data = orthodont, random = ~ 1 | Subject),
  ortho_gls_cs = gls(distance ~ age + Sex, data = orthodont,
                     correlation = corCompSymm(form = ~ 1 | Subject)),
  ortho_gls = gls(distance ~ age + Sex, data = orthodont),
  ortho_gls_ml = gls(distance ~ age, data = orthodont, method = "ML"),
  ortho_inter = lme(distance ~ age * Sex, data = orthodont, random = ~ 1 | Subject),
  ortho_gls_inter_ml = gls(distance ~ age * Sex, data = orthodont, method = "ML",
                           correlation = corCompSymm(form = ~ 1 | Subject)),
  ovary_ri = lme(follicles ~ s1 + c1, data = ovary, random = ~ 1 | Mare),
  ovary_ar1 = lme(follicles ~ s1 + c1, data = ovary, random = ~ 1 | Mare,
                  correlation = corAR1(form = ~ 1 | Mare)),
  oats_nested = lme(Y ~ V * N, data = oats, random = ~ 1 | B/V)
)
lmer_fits <- list(
  sleep_slope = lmer(Reaction ~ Days + (Days | Subject), sleepstudy),
  sleep_ri = lmer(Reaction ~ Days + (1 | Subject), sleepstudy),
  ortho_lmer_ml = lmer(distance ~ age + (1 | Subject), orthodont, REML = FALSE)
)
all_fits <- c(fits, lmer_fits)

# anova(...) comparisons: the names of the fits, in order.
comparisons <- list(
  reml_random = c("ortho_slope", "ortho_ri"),
  ml_fixed = c("ortho_ri_ml", "ortho_sex_ml", "ortho_inter_ml"),
  lme_gls = c("ortho_gls", "ortho_sex", "ortho_gls_cs"),
  ml_lme_gls = c("ortho_gls_ml", "ortho_ri_ml", "ortho_inter_ml", "ortho_gls_inter_ml"),
  ovary_ar1 = c("ovary_ri", "ovary_ar1")
)

num <- function(x) { x <- as.numeric(x); ifelse(is.na(x), NA, x) }

anova_ref <- lapply(comparisons, function(nm) {
  a <- do.call(anova, unname(fits[nm]))
  list(fits = nm, Model = as.integer(a$Model), df = as.integer(a$df), AIC = a$AIC,
       BIC = a$BIC, logLik = a$logLik,
       Test = if (is.null(a$Test)) rep("", nrow(a)) else as.character(a$Test),
       L.Ratio = if (is.null(a$L.Ratio)) rep(NA, nrow(a)) else num(a$L.Ratio),
       p.value = if (is.null(a[["p-value"]])) rep(NA, nrow(a)) else num(a[["p-value"]]))
})

# Sequential F tests of single fits.
single <- c("ortho_inter", "ortho_inter_ml", "ortho_gls_inter_ml", "ovary_ar1",
            "oats_nested")
single_ref <- lapply(setNames(single, single), function(nm) {
  a <- anova(fits[[nm]])
  list(terms = rownames(a), numDF = as.integer(a$numDF), denDF = as.integer(a$denDF),
       F.value = a[["F-value"]], p.value = a[["p-value"]])
})

# AIC / BIC tables (R's AIC(m1, m2, ...) and BIC(...)).
ic_sets <- list(
  lmer_reml = c("sleep_slope", "sleep_ri"),
  lme_reml = c("ortho_slope", "ortho_ri", "ortho_sex"),
  mixed_ml = c("ortho_lmer_ml", "ortho_ri_ml", "ortho_gls_ml", "ortho_gls_inter_ml")
)
ic_ref <- lapply(ic_sets, function(nm) {
  a <- do.call(AIC, unname(all_fits[nm]))
  b <- do.call(BIC, unname(all_fits[nm]))
  list(fits = nm, df = as.integer(a$df), AIC = a$AIC, BIC = b$BIC)
})

single_fit <- lapply(all_fits, function(m) list(logLik = as.numeric(logLik(m)),
                                                df = attr(logLik(m), "df"),
                                                AIC = AIC(m), BIC = BIC(m)))

out <- list(anova = anova_ref, sequential = single_ref, ic = ic_ref, fits = single_fit,
            versions = list(nlme = as.character(packageVersion("nlme")),
                            lme4 = as.character(packageVersion("lme4")),
                            R = R.version.string))
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, na = "null", pretty = TRUE), out_file)
cat("wrote", out_file, "\n")
