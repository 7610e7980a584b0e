"""Model registry: one level of name -> typed builder lookup.

A builder is a keyword-only function registered with :func:`register_model`; its
name is the model's name. :func:`create_model` checks the options against the
builder's signature so a typo fails loudly with the list of valid names, and it
records ``name`` and options on the model so a checkpoint can rebuild it.
"""

from __future__ import annotations

import contextlib
import inspect
import typing
from typing import Any, Callable, TypeVar

import torch
from torch import nn

from semseg.typecheck import check_options

Builder = Callable[..., nn.Module]
# Options that read weights from a file while the model is built. What they load ends up in
# the state dict, so ``model_config`` records them as None: a checkpoint rebuilt on another
# machine must not look for the file again.
WEIGHT_FILE_OPTIONS = frozenset({"backbone_weights", "weights"})
_B = TypeVar("_B", bound=Builder)
_MODELS: dict[str, Builder] = {}


def register_model(fn: _B) -> _B:
    """Register ``fn`` under its own name (e.g. ``def unet(*, num_classes, ...)``)."""
    name = fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is registered twice")
    _MODELS[name] = fn
    return fn


def list_models() -> list[str]:
    """Names accepted by :func:`create_model`, sorted."""
    _import_models()
    return sorted(_MODELS)


def model_options(name: str) -> dict[str, Any]:
    """Options of model ``name`` with their defaults (``inspect.Parameter.empty`` if required)."""
    builder = _get_builder(name)
    return {p.name: p.default for p in inspect.signature(builder).parameters.values()}


def model_backbones(name: str) -> tuple[str, ...]:
    """Valid ``backbone`` values of model ``name``, default first; ``()`` if it has no such option.

    Read from the builder's ``backbone: Literal[...]`` annotation, the one place they are listed.
    """
    builder = _get_builder(name)
    hint = typing.get_type_hints(builder).get("backbone")
    if hint is None:
        return ()
    default = inspect.signature(builder).parameters["backbone"].default
    return (default, *(b for b in typing.get_args(hint) if b != default))


def get_builder(name: str) -> Builder:
    """The typed builder function registered as ``name`` (for its signature and annotations)."""
    return _get_builder(name)


def create_model(name: str, *, num_classes: int, **options: Any) -> nn.Module:
    """Build model ``name`` with ``num_classes`` outputs.

    Options are checked against the builder's signature and type hints (an unknown name or
    a wrong type raises :class:`~semseg.typecheck.OptionError` naming it); every model takes
    ``in_channels`` (default 3), the number of image channels, which must be positive. The returned
    module carries ``model.model_config`` (name, num_classes and every option, defaults
    filled in, weight files as None) so that ``create_model(**model.model_config)`` rebuilds it.
    """
    builder = _get_builder(name)
    params = inspect.signature(builder).parameters
    options = check_options(builder, options, what=f"model {name!r}", exclude={"num_classes"})
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if options.get("in_channels", 3) < 1:  # every builder takes it; check_options made it an int
        raise ValueError(f"in_channels must be a positive int, got {options['in_channels']!r}")
    model = builder(num_classes=num_classes, **options)
    config = {"name": name}
    for p in params.values():
        value = num_classes if p.name == "num_classes" else options.get(p.name, p.default)
        config[p.name] = None if p.name in WEIGHT_FILE_OPTIONS else value
    model.model_config = config
    return model


# Options added to a builder after checkpoints were written without them, with the value that rebuilds
# such an older file as it was saved (new files record every option, defaults filled in).
_LEGACY_OPTIONS: dict[str, dict[str, Any]] = {"bisenetv2": {"aux_boosters": "s5"}}  # one booster before 4


def saved_config(config: dict[str, Any]) -> dict[str, Any]:
    """A stored ``model_config`` with the options it predates set as it was built (see ``_LEGACY_OPTIONS``)."""
    return {**_LEGACY_OPTIONS.get(config.get("name"), {}), **config}


def aux_free_twin(model: nn.Module, *, device: str | torch.device | None = None) -> nn.Module | None:
    """``model`` rebuilt from its ``model_config`` with ``aux: False`` (fresh weights, on ``device``), or None
    when it has no auxiliary head: the twin's state-dict keys are the model's minus the training-only
    ones, which is what shipping a model (drop them) and ``init_from`` (train them afresh) need."""
    config = getattr(model, "model_config", None)
    if not config or not config.get("aux"):
        return None
    with torch.device(device) if device is not None else contextlib.nullcontext():
        return create_model(**{**config, "aux": False})


def _get_builder(name: str) -> Builder:
    _import_models()
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; available models: {', '.join(sorted(_MODELS))}") from None


def _import_models() -> None:
    # Importing the package runs every @register_model; done lazily to keep the
    # registry free of import cycles.
    import semseg.models  # noqa: F401
