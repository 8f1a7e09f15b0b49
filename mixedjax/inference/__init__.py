"""Inference after a fit: small-sample df (Satterthwaite, Kenward-Roger), F tests,
likelihood-ratio tests, confidence intervals and estimated marginal means."""
