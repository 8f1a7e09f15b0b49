# Reference values for column layouts inside random terms, column names that are not
# plain identifiers, the bare bar and lme4's deviance/REMLcrit (lme4, nlme, mlmRev).
# Run from the repository root:  Rscript tests/reference/make_layout_reference.R
# Writes tests/reference/exam.csv (mlmRev's Exam, the columns the tests use) and
# tests/reference/layout_reference.json.
suppressPackageStartupMessages({library(lme4); library(nlme); library(mlmRev)
                                library(jsonlite)})

exam <- mlmRev::Exam[, c("school", "normexam", "standLRT", "sex")]
write.csv(exam, "tests/reference/exam.csv", row.names = FALSE)

varcorr <- function(m) {
  vc <- as.data.frame(VarCorr(m))
  list(grp = vc$grp, var1 = ifelse(is.na(vc$var1), NA, vc$var1),
       var2 = ifelse(is.na(vc$var2), NA, vc$var2), vcov = vc$vcov, sdcor = vc$sdcor)
}
ranefs <- function(m) {
  lapply(ranef(m), function(r) list(levels = rownames(r), columns = colnames(r),
                                    values = unname(as.matrix(r))))
}
fit_info <- function(m) {
  list(reml = isREML(m), reml_crit = REMLcrit(m),
       objective = if (isREML(m)) REMLcrit(m) else deviance(m),
       theta = unname(getME(m, "theta")), theta_names = names(getME(m, "theta")),
       cnms = getME(m, "cnms"), sigma = sigma(m), fixef = as.list(fixef(m)),
       fixef_names = names(fixef(m)), varcorr = varcorr(m), ranef = ranefs(m))
}
fit <- function(formula, data, ...) {
  c(list(formula = deparse(formula, width.cutoff = 500L)),
    fit_info(lmer(formula, data, ...)))
}

# nlme's Oats as R has it (Block an ordered factor there: made a plain factor so its
# levels sort as in the bundled data set); the bundled oats is the same data.
oats <- data.frame(Block = factor(as.character(Oats$Block)), Variety = Oats$Variety,
                   nitro = Oats$nitro, yield = Oats$yield)
bundled <- read.csv("mixedjax/datasets/oats.csv")
key <- function(b, v, n) paste(b, sub("Golden.rain", "Golden Rain", v), n)
stopifnot(all.equal(
  bundled$Y[match(key(oats$Block, oats$Variety, oats$nitro),
                  key(bundled$B, bundled$V, as.numeric(sub("cwt", "", bundled$N))))],
  oats$yield))

# sleepstudy with column names that are Python keywords, non-ASCII or not names at all.
sleep <- read.csv("mixedjax/datasets/sleepstudy.csv")
sleep$Subject <- factor(sleep$Subject)
odd <- data.frame(yield = sleep$Reaction, `my days` = sleep$Days, class = sleep$Subject,
                  `if` = sleep$Reaction, `größe` = sleep$Days,
                  lambda = (sleep$Days - 4.5)^2 / 10, `my g` = sleep$Subject,
                  check.names = FALSE)

lme_oats <- lme(yield ~ nitro, random = ~ 1 | Block/Variety, data = oats)
gls_oats <- gls(yield ~ nitro + Variety, data = oats)
m_reml <- lmer(Reaction ~ Days + (Days | Subject), sleep)
m_ml <- lmer(Reaction ~ Days + (Days | Subject), sleep, REML = FALSE)

out <- list(
  exam = fit(normexam ~ standLRT + sex + (standLRT + sex | school), exam),
  exam_factor_first = fit(normexam ~ sex + standLRT + (sex + standLRT | school), exam),
  oats = fit(yield ~ nitro + (1 | Block/Variety), oats),
  oats_lme = list(fixef = as.list(fixef(lme_oats)), sigma = lme_oats$sigma,
                  loglik = as.numeric(logLik(lme_oats)),
                  sd = unname(sapply(lme_oats$modelStruct$reStruct,
                                     function(s) sqrt(as.numeric(as.matrix(s)))) *
                                lme_oats$sigma)),
  oats_gls = list(coef = as.list(coef(gls_oats)), sigma = gls_oats$sigma,
                  loglik = as.numeric(logLik(gls_oats))),
  keywords = fit(yield ~ `my days` + (`my days` | class), odd),
  reserved = fit(log(`if`) ~ `größe` + lambda + (`größe` | `my g`), odd),
  bare_bar = fit(log(Reaction) ~ Days | Subject, sleep),
  bare_double_bar = fit(Reaction ~ Days || Subject, sleep),
  deviance = list(reml_fit_deviance = suppressWarnings(deviance(m_reml)),
                  reml_fit_remlcrit = REMLcrit(m_reml),
                  reml_fit_ml_deviance = deviance(m_reml, REML = FALSE),
                  ml_fit_deviance = deviance(m_ml), ml_fit_remlcrit = REMLcrit(m_ml),
                  reml_fit_warning = tryCatch(deviance(m_reml),
                                              warning = function(w) conditionMessage(w))),
  # lme4 refuses non-finite values made inside the formula.
  nonfinite_errors = local({
    d <- sleep; d$x <- d$Days; d$x[1] <- 1e200; d$y <- d$Reaction; d$y[1] <- 0
    err <- function(expr) tryCatch({expr; "no error"}, error = function(e) conditionMessage(e))
    list(fixed = err(lmer(Reaction ~ I(x^2) + (1 | Subject), d)),
         response = err(lmer(log(y) ~ Days + (1 | Subject), d)),
         slope = err(lmer(Reaction ~ Days + (I(x^2) | Subject), d)))
  })
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, null = "null", na = "null",
                  pretty = TRUE), "tests/reference/layout_reference.json")
