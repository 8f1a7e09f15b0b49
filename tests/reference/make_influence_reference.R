# Reference values for influence diagnostics (lme4 >= 1.1-31: influence.merMod refits
# with each group, or each observation, left out; hatvalues at the fitted theta).
# Run from the repository root:  Rscript tests/reference/make_influence_reference.R
suppressPackageStartupMessages({library(lme4); library(jsonlite)})
sleep <- read.csv("mixedjax/datasets/sleepstudy.csv")
sleep$Subject <- factor(sleep$Subject)
sleep$w <- 0.5 + (seq_len(nrow(sleep)) %% 7) / 4
dye <- read.csv("mixedjax/datasets/dyestuff.csv")
dye$Batch <- factor(dye$Batch)
pen <- read.csv("mixedjax/datasets/penicillin.csv")
pen$plate <- factor(pen$plate); pen$sample <- factor(pen$sample)

ctrl <- lmerControl(optCtrl = list(xtol_abs = 1e-12, ftol_abs = 1e-14, maxfun = 1e5))
deletion <- function(m, infl) {
  # lme4's output plus influence.ME's definitions computed from the same refits:
  # Cook's D = (b - b_(-i))' vcov^-1 (b - b_(-i)) / p, DFBETAS = (b - b_(-i)) / se_(-i).
  b <- fixef(m); V <- as.matrix(vcov(m))
  b1 <- infl[["fixed.effects[-Subject]"]]
  if (is.null(b1)) b1 <- infl[[2]]
  se1 <- t(sapply(infl[[6]], function(v) sqrt(diag(as.matrix(v)))))
  if (length(b) == 1) se1 <- t(se1)
  db <- sweep(b1, 2, b)
  cook <- apply(db, 1, function(d) sum(d * solve(V, d))) / length(b)
  list(units = rownames(b1), fixef_deleted = unname(b1), se_deleted = unname(se1),
       varcomp_deleted = unname(infl[[4]]),
       cooks_lme4 = unname(cooks.distance(infl)),
       # lme4 1.1-31 dfbetas() fails for p = 1; its definition is dfbeta / se_(-i).
       dfbetas_lme4 = unname(tryCatch(dfbetas(infl), error = function(e) db / se1)),
       cooks_influenceME = unname(cook), dfbetas_influenceME = unname(-db / se1))
}

m_sleep <- lmer(Reaction ~ Days + (Days | Subject), sleep, control = ctrl)
m_dye <- lmer(Yield ~ 1 + (1 | Batch), dye, control = ctrl)
m_pen <- lmer(diameter ~ 1 + (1 | plate) + (1 | sample), pen, control = ctrl)
m_sleep_w <- lmer(Reaction ~ Days + (Days | Subject), sleep, weights = w, control = ctrl)

out <- list(
  sleepstudy_subject = deletion(m_sleep, influence(m_sleep, groups = "Subject")),
  dyestuff_case = deletion(m_dye, influence(m_dye)),
  # theta alongside, so the tests can evaluate the hat matrix at lme4's own theta.
  hat = lapply(list(sleepstudy = m_sleep, dyestuff = m_dye, penicillin = m_pen,
                    sleepstudy_weighted = m_sleep_w),
               function(m) list(theta = unname(getME(m, "theta")), hat = unname(hatvalues(m)))),
  cooks_hat = list(sleepstudy = unname(cooks.distance(m_sleep)))
)
writeLines(toJSON(out, digits = NA, auto_unbox = TRUE, pretty = TRUE),
           "tests/reference/influence_reference.json")
