# Reference fits for crossed designs large enough to be fitted by BFGS on the eager
# exact gradient (mixedjax/blocked.py) rather than by the closed-form Newton path.
# Run from the repository root:  Rscript tests/reference/make_crossed_reference.R
# Writes tests/reference/crossed.csv (the simulated data) and crossed_reference.json.
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
set.seed(20261121)
n <- 1200
g <- sample(60, n, replace = TRUE)
h <- sample(40, n, replace = TRUE)
x <- rnorm(n)
f <- sample(c("a", "b", "c"), n, replace = TRUE)
bg <- matrix(rnorm(120), 60) %*% chol(matrix(c(1, 0.4, 0.4, 0.5), 2))
bh <- matrix(rnorm(80), 40) %*% chol(matrix(c(0.6, -0.2, -0.2, 0.3), 2))
gh <- rnorm(2400, sd = 0.5)
y <- 2 + 0.7 * x + c(a = 0, b = 0.5, c = -0.3)[f] + bg[g, 1] + bg[g, 2] * x + bh[h, 1] +
  bh[h, 2] * x + gh[(g - 1) * 40 + h] + rnorm(n)
d <- data.frame(y = y, x = x, f = f, g = paste0("g", g), h = paste0("h", h))
write.csv(d, "tests/reference/crossed.csv", row.names = FALSE)
d$g <- factor(d$g); d$h <- factor(d$h); d$f <- factor(d$f)

fit_info <- function(m) {
  list(objective = if (isREML(m)) REMLcrit(m) else deviance(m),
       theta = unname(getME(m, "theta")), sigma = sigma(m),
       fixef = as.list(fixef(m)), stderr = as.list(sqrt(diag(as.matrix(vcov(m))))),
       singular = isSingular(m))
}
ctrl <- lmerControl(optimizer = "bobyqa", optCtrl = list(maxfun = 1e5))
cases <- list(
  slopes_reml = list(formula = "y ~ x + (1 + x | g) + (1 + x | h)", reml = TRUE),
  slopes_ml = list(formula = "y ~ x + (1 + x | g) + (1 + x | h)", reml = FALSE),
  interaction_reml = list(formula = "y ~ x + f + (1 | g) + (1 | h) + (1 | g:h)", reml = TRUE)
)
out <- lapply(cases, function(cs) {
  m <- lmer(as.formula(cs$formula), d, REML = cs$reml, control = ctrl)
  c(cs, fit_info(m))
})
write(toJSON(out, auto_unbox = TRUE, digits = NA, pretty = TRUE),
      "tests/reference/crossed_reference.json")
