"""Values from outside (recipes, command lines, checkpoint metadata) checked against type hints.

One checker for every boundary: the training config's fields, the options of model,
dataset and loss builders (read from their signatures), and the ``model_config`` stored in
a checkpoint. A YAML ``"false"`` for a ``bool``, a float for an ``int`` or an unknown key
fails here with the key's dotted name and what was expected, before anything is built.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Collection, Sequence
from typing import Any, Literal


class OptionError(TypeError, ValueError):
    """A key or value does not match what its builder declares; the message names the key.

    A ``ValueError`` for the command line's one-line errors, a ``TypeError`` for callers
    that treat a wrong keyword as Python does.
    """


def check_value(hint: Any, value: Any, key: str) -> Any:
    """``value`` checked against ``hint``; ints are accepted (and converted) for floats, lists for tuples."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return check_value(option, value, key)
            except OptionError as exc:
                errors.append(str(exc))
        raise OptionError(errors[0] if errors else f"{key} must be None, got {value!r}")
    if origin is Literal:
        if not any(value == a and type(value) is type(a) for a in args):
            raise OptionError(f"{key} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple, Sequence, typing.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise OptionError(f"{key} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise OptionError(f"{key} must have {len(args)} items, got {value!r}")
            items = [check_value(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value))]
        else:
            items = [check_value(args[0] if args else Any, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple or hint is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise OptionError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if hint is float:
        number = None
        if isinstance(value, str):
            # PyYAML reads "1e-4" (no dot) as a string: YAML 1.1's float needs one.
            try:
                number = float(value)
            except ValueError:
                pass
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
        if number is None:
            raise OptionError(f"{key} must be float, got {value!r}")
        if not math.isfinite(number):  # a NaN or infinite setting trains NaN weights, or nothing, without a word
            raise OptionError(f"{key} must be a finite number, got {value!r}")
        return number
    if not isinstance(hint, type):
        return value  # a hint this checker does not model (e.g. a Protocol): the builder checks it
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise OptionError(f"{key} must be {hint.__name__}, got {value!r}")
    return value


def check_options(fn: Callable[..., Any], options: dict[str, Any], *, what: str, prefix: str = "",
                  exclude: Collection[str] = ()) -> dict[str, Any]:  # fmt: skip
    """``options`` checked against ``fn``'s keyword parameters and their hints; returns them coerced.

    ``what`` names the builder in messages (e.g. "model 'unet'"); ``exclude`` lists
    parameters the caller fills itself, which ``options`` may not set.
    """
    params = {n: p for n, p in inspect.signature(fn).parameters.items()
              if n not in exclude and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD) and n != "self"}  # fmt: skip
    unknown = sorted(set(options) - set(params))
    if unknown:
        raise OptionError(f"unknown option(s) {', '.join(prefix + k for k in unknown)} for {what}; "
                          f"valid options: {', '.join(params) or '(none)'}")  # fmt: skip
    hints = typing.get_type_hints(fn.__init__ if isinstance(fn, type) else fn)
    return {k: check_value(hints.get(k, Any), v, prefix + k) for k, v in options.items()}
