# Random designs fitted by lme4: the optimum mixedjax must reach or beat.
# Run from the repository root:  Rscript tests/reference/make_fuzz_reference.R
# Writes tests/reference/fuzz_designs.csv (all designs stacked; column `design`) and
# tests/reference/fuzz_reference.json (per design: formula, REML or ML, weights or
# not, and lme4's objective and theta).  Designs: one to three grouping factors,
# nested or crossed; random intercepts, correlated and uncorrelated slopes;
# covariates centred or shifted; variance components from zero to large; weights
# in some designs.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
set.seed(20261204)
ndesign <- 30
designs <- list()
ref <- list()
draw <- function(i) {
  n <- sample(20:90, 1)
  nfac <- sample(1:3, 1)
  nested <- runif(1) < 0.5
  x <- rnorm(n) + sample(c(0, 0, 3), 1)
  y <- 1 + 0.5 * x + rnorm(n)
  d <- data.frame(design = i, x = x)
  terms <- character(0)
  prev <- NULL
  for (f in seq_len(nfac)) {
    m <- sample(2:6, 1)
    codes <- if (nested && f > 1) prev * m + sample(0:(m - 1), n, TRUE) else sample(0:(m - 1), n, TRUE)
    prev <- codes
    lev <- match(codes, sort(unique(codes)))
    sd <- sample(c(0, 0.3, 1, 3), 1)
    kind <- sample(c("1", "x", "x||"), 1)
    y <- y + sd * rnorm(max(lev))[lev]
    if (kind != "1") y <- y + 0.5 * sd * rnorm(max(lev))[lev] * x
    d[[paste0("g", f - 1)]] <- paste0("L", lev)
    terms <- c(terms, switch(kind, "1" = sprintf("(1 | g%d)", f - 1),
                             "x" = sprintf("(x | g%d)", f - 1),
                             "x||" = sprintf("(x || g%d)", f - 1)))
  }
  for (f in seq_len(3)) if (is.null(d[[paste0("g", f - 1)]])) d[[paste0("g", f - 1)]] <- NA
  d$y <- y
  weighted <- runif(1) < 0.25
  d$w <- if (weighted) exp(rnorm(n)) else 1
  reml <- runif(1) < 0.7
  formula <- paste("y ~ x +", paste(terms, collapse = " + "))
  sub <- d
  for (f in seq_len(nfac)) sub[[paste0("g", f - 1)]] <- factor(sub[[paste0("g", f - 1)]])
  # lme4 refuses designs with more random effects than observations: draw again.
  fit <- tryCatch(suppressWarnings(suppressMessages(
    if (weighted) lmer(as.formula(formula), sub, REML = reml, weights = w)
    else lmer(as.formula(formula), sub, REML = reml))), error = function(e) NULL)
  if (is.null(fit)) return(NULL)
  list(data = d, ref = list(design = i, formula = formula, reml = reml, weighted = weighted,
                            objective = if (reml) REMLcrit(fit) else deviance(fit),
                            theta = unname(getME(fit, "theta"))))
}
i <- 1
while (i <= ndesign) {
  one <- draw(i)
  if (is.null(one)) next
  designs[[i]] <- one$data
  ref[[i]] <- one$ref
  i <- i + 1
}
write.csv(do.call(rbind, designs), "tests/reference/fuzz_designs.csv", row.names = FALSE)
writeLines(toJSON(list(lme4 = as.character(packageVersion("lme4")), designs = ref),
                  auto_unbox = TRUE, digits = NA, pretty = TRUE),
           "tests/reference/fuzz_reference.json")
