"""Runtime checks of knowscope's jaxtyping annotations, installed for the test run by conftest.py.

jaxtyping's import hook decorates every function in ``knowscope`` with ``jaxtyped``, which keeps one
shape memo per call (so ``"batch pos"`` must mean the same sizes in every argument and the return
value). ``check_arrays`` is the typechecker it calls: it checks only the array annotations
(``Float[Tensor, "..."]`` and ``X | None`` of them) — dtype, rank and dimension names — and
leaves every other annotation alone, so argument validation (``Literal`` kinds, ``Model``, ...)
stays the library's own and its clear ``ValueError`` messages are what the tests see.
"""

from __future__ import annotations

import functools
import inspect
import types
import typing
from typing import Any

from jaxtyping import AbstractArray, TypeCheckError


def _array_types(annotation: Any) -> tuple[type, ...] | None:
    """The jaxtyping array types an annotation allows (with ``None`` when optional), or None if it is not one."""
    if isinstance(annotation, type) and issubclass(annotation, AbstractArray):
        return (annotation,)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        arrays = [m for m in members if isinstance(m, type) and issubclass(m, AbstractArray)]
        if arrays and all(m in arrays or m is type(None) for m in members):
            return tuple(arrays) + ((type(None),) if type(None) in members else ())
    return None


def check_arrays(fn: Any) -> Any:
    """Wrap ``fn`` so that its array-annotated parameters and return value are checked on every call."""
    annotations = getattr(fn, "__annotations__", {})
    checks = {name: allowed for name, ann in annotations.items() if (allowed := _array_types(ann)) is not None}
    if not checks:
        return fn
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name, value in bound.arguments.items():
            if name in checks and not isinstance(value, checks[name]):
                raise TypeCheckError(f"{fn.__qualname__}: argument {name!r} does not match {annotations[name]}: "
                                     f"{_describe(value)}")
        out = fn(*args, **kwargs)
        if "return" in checks and not isinstance(out, checks["return"]):
            raise TypeCheckError(f"{fn.__qualname__}: return value does not match {annotations['return']}: "
                                 f"{_describe(out)}")
        return out

    return checked


def _describe(value: Any) -> str:
    shape = getattr(value, "shape", None)
    return f"{type(value).__name__} of shape {tuple(shape)} and dtype {value.dtype}" if shape is not None \
        else type(value).__name__
