"""Fits that travel: picklable designs and the file format of ``save``/``load``.

patsy refuses to pickle its design infos (the encodings that build X and Z for new
data: factor levels, contrasts, the state of stateful transforms such as
``center(x)``).  :func:`describe_info` writes one as plain data
(:class:`EncodingSpec`: codes, levels, contrast matrices, and each stateful
transform's fitted state) and :func:`rebuild_info` makes the same design info
again: patsy's own factor protocol (``memorize_passes_needed``) recreates each
factor's evaluation code and transform objects, and the transforms then receive
their saved state, so ``center(x)`` subtracts the mean of the original data, not
one recomputed from other rows.

:func:`save` writes a header (magic string, format version, package version) and
then the object, as two pickles in one file; :func:`load` reads the header first,
so a file of another format version is refused with a ``ValueError`` before any
of its objects are built.
"""

from __future__ import annotations

import functools
import os
import pickle
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import patsy

from ._config import VERSION

__all__ = ["FORMAT_VERSION", "EncodingSpec", "describe_info", "rebuild_info", "encode_infos",
           "decode_infos", "plain_state", "save", "load"]

FORMAT_VERSION = 1
MAGIC = "mixedjax saved object"


@dataclass(frozen=True)
class EncodingSpec:
    """A patsy ``DesignInfo`` as plain data.

    ``factors``: per factor (in the design info's order) its code, type
    (``"numerical"`` or ``"categorical"``), number of columns, levels, and the state
    of each of its stateful transforms (``{name: (class name, attributes)}``).
    ``terms``: per term the indices of its factors and its subterms, each
    ``(factor indices, {factor index: (contrast matrix, column suffixes)}, columns)``.
    """

    column_names: tuple
    factors: tuple
    terms: tuple


def describe_info(info) -> EncodingSpec:
    """The plain description of a patsy ``DesignInfo`` built from a formula string."""
    factors = list(info.factor_infos)
    index = {f: i for i, f in enumerate(factors)}
    fspecs = []
    for f in factors:
        if not isinstance(f, patsy.EvalFactor):
            raise TypeError(f"cannot describe the patsy factor {f!r}: only factors of a "
                            "formula string are supported")
        fi = info.factor_infos[f]
        transforms = {name: (type(obj).__qualname__, dict(vars(obj)))
                      for name, obj in fi.state.get("transforms", {}).items()}
        fspecs.append({"code": f.code, "type": fi.type, "num_columns": fi.num_columns,
                       "categories": None if fi.categories is None else tuple(fi.categories),
                       "transforms": transforms})
    terms = []
    for term, subterms in info.term_codings.items():
        subs = tuple(
            (tuple(index[f] for f in st.factors),
             {index[f]: (np.asarray(cm.matrix, dtype=np.float64), list(cm.column_suffixes))
              for f, cm in st.contrast_matrices.items()},
             int(st.num_columns))
            for st in subterms)
        terms.append((tuple(index[f] for f in term.factors), subs))
    return EncodingSpec(tuple(info.column_names), tuple(fspecs), tuple(terms))


def _factor_state(spec: dict, factor, env) -> dict:
    """A factor's memorized state: patsy rebuilds the evaluation code and fresh
    transform objects (named deterministically), which then take the saved state."""
    state: dict = {}
    factor.memorize_passes_needed(state, env)
    saved = spec["transforms"]
    if set(state["transforms"]) != set(saved):
        raise ValueError(f"cannot rebuild the encoding of {spec['code']!r}: its stateful "
                         f"transforms {sorted(state['transforms'])} differ from the saved "
                         f"{sorted(saved)}")
    for name, obj in state["transforms"].items():
        cls_name, attrs = saved[name]
        if type(obj).__qualname__ != cls_name:
            raise ValueError(f"cannot rebuild the encoding of {spec['code']!r}: transform "
                             f"{name} is a {type(obj).__qualname__}, saved as {cls_name}")
        obj.__dict__.clear()
        obj.__dict__.update(attrs)
    return state


def rebuild_info(spec: EncodingSpec, env):
    """The patsy ``DesignInfo`` that :func:`describe_info` described; ``env`` is the
    ``patsy.EvalEnvironment`` the formula was evaluated in (its functions are looked
    up by name, as when the design was first built)."""
    factors = [patsy.EvalFactor(f["code"]) for f in spec.factors]
    infos = OrderedDict()
    for f, fs in zip(factors, spec.factors):
        categorical = fs["type"] == "categorical"
        infos[f] = patsy.FactorInfo(f, fs["type"], _factor_state(fs, f, env),
                                    num_columns=None if categorical else fs["num_columns"],
                                    categories=fs["categories"] if categorical else None)
    codings = OrderedDict()
    for fidx, subs in spec.terms:
        codings[patsy.Term([factors[i] for i in fidx])] = [
            patsy.SubtermInfo([factors[i] for i in sidx],
                              {factors[i]: patsy.ContrastMatrix(m, s)
                               for i, (m, s) in cms.items()}, ncol)
            for sidx, cms, ncol in subs]
    return patsy.DesignInfo(list(spec.column_names), factor_infos=infos, term_codings=codings)


def encode_infos(state: dict, names) -> dict:
    """A copy of an object's state with the design infos under ``names`` described
    by :func:`describe_info` (None stays None)."""
    out = dict(state)
    for name in names:
        if out.get(name) is not None:
            out[name] = describe_info(out[name])
    return out


def decode_infos(state: dict, names, env) -> dict:
    """The inverse of :func:`encode_infos`: the described design infos rebuilt in
    ``env`` (:func:`rebuild_info`)."""
    out = dict(state)
    for name in names:
        if isinstance(out.get(name), EncodingSpec):
            out[name] = rebuild_info(out[name], env)
    return out


def plain_state(obj) -> dict:
    """An object's attributes without the values of its ``functools.cached_property``
    attributes (caches, JAX arrays, compiled functions): they are recomputed on first
    use after loading."""
    cached = {name for klass in type(obj).__mro__ for name, attr in vars(klass).items()
              if isinstance(attr, functools.cached_property)}
    return {k: v for k, v in obj.__dict__.items() if k not in cached}


def save(obj, path) -> None:
    """Write ``obj`` to ``path``: a header ``{"magic", "format_version",
    "mixedjax_version", "type"}`` and the object, each a pickle."""
    header = {"magic": MAGIC, "format_version": FORMAT_VERSION, "mixedjax_version": VERSION,
              "type": type(obj).__name__}
    payload = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    with open(os.fspath(path), "wb") as fh:
        pickle.dump(header, fh, protocol=pickle.HIGHEST_PROTOCOL)
        fh.write(payload)


def load(path):
    """Read an object written by ``save`` (a fit, a model, a batch of fits).

    Raises ``ValueError`` when the file is not a mixedjax file or was written in
    another format version.  Loading unpickles: load only files you trust.
    """
    with open(os.fspath(path), "rb") as fh:
        try:
            header = pickle.load(fh)
        except Exception as err:
            raise ValueError(f"{os.fspath(path)!r} is not a file written by mixedjax's "
                             f"save ({type(err).__name__}: {err})") from None
        if not isinstance(header, dict) or header.get("magic") != MAGIC:
            raise ValueError(f"{os.fspath(path)!r} is not a file written by mixedjax's save")
        version = header.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"{os.fspath(path)!r} has format version {version!r} (written by mixedjax "
                f"{header.get('mixedjax_version')}); this mixedjax ({VERSION}) reads format "
                f"version {FORMAT_VERSION}")
        try:
            return pickle.load(fh)
        except (EOFError, pickle.UnpicklingError) as err:
            raise ValueError(f"{os.fspath(path)!r} is truncated or damaged "
                             f"({type(err).__name__}: {err})") from None
