"""Argument checks shared by the report functions of several layers."""

from __future__ import annotations

__all__ = ["check_effects"]


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
