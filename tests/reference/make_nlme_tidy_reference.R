# make_nlme_tidy_reference.R
#
# Produces tests/reference/nlme_tidy_reference.json: broom.mixed's tidy() and
# glance() of nlme lme and gls fits (REML and ML, with conf.int = TRUE, with
# ran_pars on the vcov scale, and lme fits with a varIdent variance function,
# estimated and fixed).
#
# Run from the repository root:
#   cd /work/main && Rscript tests/reference/make_nlme_tidy_reference.R
# Orthodont's Sex has levels c("Male", "Female") as in nlme's own data.

suppressPackageStartupMessages({
  library(nlme)
  library(broom.mixed)
  library(jsonlite)
})

d <- read.csv(file.path("mixedjax", "datasets", "orthodont.csv"), stringsAsFactors = FALSE)
d$Subject <- factor(d$Subject)
d$Sex <- factor(d$Sex, levels = c("Male", "Female"))
out_file <- file.path("tests", "reference", "nlme_tidy_reference.json")

fits <- list(
  lme_slope = lme(distance ~ age + Sex, data = d, random = ~ 1 + age | Subject),
  lme_slope_ml = lme(distance ~ age + Sex, data = d, random = ~ 1 + age | Subject,
                     method = "ML"),
  gls_ar1 = gls(distance ~ age + Sex, data = d, correlation = corAR1(form = ~ 1 | Subject)),
  gls_cs_ml = gls(distance ~ age + Sex, data = d, method = "ML",
                  correlation = corCompSymm(form = ~ 1 | Subject))
)

as_list <- function(tb) lapply(as.list(as.data.frame(tb)), function(v) if (is.numeric(v)) as.vector(unclass(v)) else v)

# broom.mixed's tidy.lme calls intervals(x) without conf.level (its intervals
# are 95% whatever conf.level is); this puts intervals(x, level) in their place,
# mapped to rows as tidy.lme maps them, for the reference of other levels.
with_level <- function(tb, f, level) {
  iv <- intervals(f, level = level)
  fx <- iv$fixed
  i <- match(tb$term[tb$effect == "fixed"], rownames(fx))
  tb$conf.low[tb$effect == "fixed"] <- fx[i, "lower"]
  tb$conf.high[tb$effect == "fixed"] <- fx[i, "upper"]
  for (g in names(iv$reStruct)) {
    z <- iv$reStruct[[g]]
    nm <- sub("\\(", "_", sub(")$", "", sub(",", ".", rownames(z))))
    cor <- grepl("^cor", nm)
    nm[cor] <- sub("_([^\\.]+)\\.(.+)$", "_\\2.\\1", nm[cor], perl = TRUE)
    rows <- which(tb$group == g)
    j <- match(tb$term[rows], nm)
    tb$conf.low[rows] <- z[j, "lower"]
    tb$conf.high[rows] <- z[j, "upper"]
  }
  tb
}

ref <- lapply(names(fits), function(nm) {
  f <- fits[[nm]]
  out <- list(tidy = as_list(tidy(f, conf.int = TRUE)), glance = as_list(glance(f)))
  if (inherits(f, "lme")) {
    out$tidy_plain <- as_list(tidy(f))
    out$tidy_vcov <- as_list(tidy(f, effects = "ran_pars", scales = "vcov"))
    out$tidy_90 <- as_list(with_level(tidy(f, conf.int = TRUE), f, 0.9))
  } else {
    out$tidy_90 <- as_list(tidy(f, conf.int = TRUE, conf.level = 0.9))
  }
  out
})
names(ref) <- names(fits)
# broom.mixed's default effects include the variance function's parameters.
vi <- lme(distance ~ age, data = d, random = ~ 1 | Subject, weights = varIdent(form = ~ 1 | Sex))
ref$lme_varident <- list(tidy_plain = as_list(tidy(vi)), glance = as_list(glance(vi)))
vf <- lme(distance ~ age, data = d, random = ~ 1 | Subject,
          weights = varIdent(form = ~ 1 | Sex, fixed = c(Male = 2)))
ref$lme_varident_fixed <- list(tidy_plain = as_list(tidy(vf)), glance = as_list(glance(vf)))
ref$versions <- list(broom.mixed = as.character(packageVersion("broom.mixed")),
                     nlme = as.character(packageVersion("nlme")))
writeLines(toJSON(ref, digits = NA, na = "null", auto_unbox = FALSE, pretty = TRUE), out_file)
