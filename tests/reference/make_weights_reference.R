# Reference values for prior weights and offsets in lmer (lme4).
# Run from the repository root:  Rscript tests/reference/make_weights_reference.R
# Weights and offset are deterministic functions of the row number, so the tests
# rebuild them without R.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
d <- read.csv("mixedjax/datasets/sleepstudy.csv")
d$Subject <- factor(d$Subject)
i <- seq_len(nrow(d))
d$w <- 0.5 + (i %% 7) / 4
d$off <- sin(i)
pen <- read.csv("mixedjax/datasets/penicillin.csv")
pen$plate <- factor(pen$plate); pen$sample <- factor(pen$sample)
j <- seq_len(nrow(pen))
pen$w <- 1 + (j %% 5) / 2

fit_info <- function(m) {
  list(objective = if (isREML(m)) REMLcrit(m) else deviance(m),
       theta = unname(getME(m, "theta")), sigma = sigma(m),
       fixef = as.list(fixef(m)), stderr = as.list(sqrt(diag(as.matrix(vcov(m))))),
       loglik = as.numeric(logLik(m)), fitted_head = unname(head(fitted(m), 10)),
       resid_head = unname(head(residuals(m), 10)))
}
out <- list(
  sleepstudy_weights_reml = c(list(formula = "Reaction ~ Days + (Days | Subject)", reml = TRUE,
                                   weights = "w", offset = NULL),
                              fit_info(lmer(Reaction ~ Days + (Days | Subject), d, weights = w))),
  sleepstudy_weights_ml = c(list(formula = "Reaction ~ Days + (Days | Subject)", reml = FALSE,
                                 weights = "w", offset = NULL),
                            fit_info(lmer(Reaction ~ Days + (Days | Subject), d, weights = w,
                                          REML = FALSE))),
  sleepstudy_offset_weights = c(list(formula = "Reaction ~ Days + (Days | Subject)", reml = TRUE,
                                     weights = "w", offset = "off"),
                                fit_info(lmer(Reaction ~ Days + (Days | Subject), d, weights = w,
                                              offset = off))),
  penicillin_weights = c(list(formula = "diameter ~ 1 + (1 | plate) + (1 | sample)", reml = TRUE,
                              weights = "w", offset = NULL),
                         fit_info(lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pen, weights = w)))
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, null = "null", pretty = TRUE),
           "tests/reference/weights_reference.json")
