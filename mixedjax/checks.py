"""Argument checks shared by the report functions of several layers."""

from __future__ import annotations

import numpy as np

__all__ = ["check_effects", "check_flag"]


def check_effects(effects, allowed: tuple[str, ...], fit: str = "") -> list[str]:
    """``effects`` (a string or a sequence of strings, each one of ``allowed``) as a
    list in the order of ``allowed``; a TypeError or ValueError naming the argument
    otherwise.  ``fit`` names the kind of fit in the message (" for an lme fit")."""
    if isinstance(effects, str):
        effects = [effects]
    try:
        effects = list(effects)
    except TypeError:
        raise TypeError("effects must be a string or a sequence of strings, got "
                        f"{type(effects).__name__}") from None
    unknown = [e for e in effects if e not in allowed]
    if unknown:
        raise ValueError(f"unknown effect type(s) {unknown}{fit}; use any of {list(allowed)}")
    if not effects:
        raise ValueError(f"effects is empty; use any of {list(allowed)}")
    return [e for e in allowed if e in effects]


def check_flag(value, name: str) -> bool:
    """``value`` as a bool when it is one (Python's or NumPy's, or the integers 0
    and 1); a TypeError naming the argument otherwise, so that ``reml="no"`` is not
    read as true (lme4: "argument is not interpretable as logical")."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)) and value in (0, 1):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")
