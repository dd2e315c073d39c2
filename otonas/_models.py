"""Resolve a MODEL string (``torchvision:NAME``, ``search_spaces:NAME``,
``transformers:CLASS``, ``package.module:callable``) to a module and example inputs."""

from __future__ import annotations

import importlib
import inspect
import json
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ._errors import UsageError, UserCodeError

__all__ = ["ResolvedModel", "resolve_model", "user_callable", "parse_shape", "example_inputs"]


@dataclass(frozen=True)
class ResolvedModel:
    spec: str
    model: nn.Module
    input_shapes: tuple[tuple[int, ...], ...]  # per input, batch included
    input_dtypes: tuple[torch.dtype, ...]


def parse_shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--input-shape {text!r} is not a comma-separated list of integers; "
                         "write it like 2,3,224,224") from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape {text!r} must list positive sizes, e.g. 2,3,224,224")
    return shape


def _torchvision_model(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, tuple[tuple[int, ...], ...]]:
    """The model without weights and the shape (batch excluded) of each of its image inputs:
    one per required argument of its forward (RAFT takes two frames)."""
    from ._torchvision import import_torchvision

    tv = import_torchvision()
    names = tv.models.list_models()
    if name not in names:
        close = [n for n in names if name.lower() in n.lower()][:5]
        raise UsageError(f"torchvision has no model {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                                  "; see torchvision.models.list_models()"))
    kwargs = dict(kwargs)
    try:  # detection / segmentation models default to a pretrained backbone: nothing downloads here
        if "weights_backbone" in inspect.signature(tv.models.get_model_builder(name)).parameters:
            kwargs.setdefault("weights_backbone", None)
    except (TypeError, ValueError):
        pass
    model = tv.models.get_model(name, weights=None, **kwargs)
    size = 224
    try:  # reads metadata only, downloads nothing
        weights = next(iter(tv.models.get_model_weights(name)))
        crop = getattr(weights.transforms(), "crop_size", None)
        if crop is not None:
            size = int(crop[0] if isinstance(crop, (list, tuple)) else crop)
        elif name in tv.models.list_models(module=tv.models.optical_flow):  # no crop: the smallest input it takes
            size = int(max(weights.meta["min_size"]))
    except Exception:  # models without weights metadata keep 224
        pass
    try:
        required = [q for q in inspect.signature(model.forward).parameters.values()
                    if q.default is q.empty and q.kind in (q.POSITIONAL_ONLY, q.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        required = []
    return model, ((3, size, size),) * max(1, len(required))


def _transformers_model(name: str, kwargs: dict[str, Any]) -> tuple[nn.Module, tuple[int, ...] | None, torch.dtype]:
    """A HuggingFace model class built from its config class with ``kwargs`` (random weights:
    nothing downloads), and the shape of one sample of its main input."""
    from ._torchvision import prepare_torchvision

    prepare_torchvision()
    try:
        import transformers
    except ImportError as e:
        raise UsageError(f"MODEL 'transformers:{name}' needs transformers: pip install transformers ({e})") from None
    cls = getattr(transformers, name, None)
    config_class = getattr(cls, "config_class", None)
    if cls is None or config_class is None:
        raise UsageError(f"transformers has no model class {name!r}; give one such as LlamaForCausalLM or BertModel")
    config = config_class(**kwargs)
    if getattr(config, "is_encoder_decoder", False):
        raise UsageError(f"MODEL 'transformers:{name}' is an encoder-decoder: it takes decoder inputs as well; "
                         "use the Python API (otonas.analyze(model, (input_ids, None, decoder_input_ids)))")
    model = cls(config)
    main = getattr(model, "main_input_name", "input_ids")
    if main == "input_ids":
        return model, (16,), torch.long
    if main == "pixel_values":
        size = getattr(config, "image_size", 224)
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        return model, (int(getattr(config, "num_channels", 3)), size, size), torch.float32
    return model, None, torch.float32


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _call_args(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def user_callable(spec: str) -> Any:
    """The callable a ``package.module:callable`` MODEL names. Its module is imported after
    torchvision is made importable (see :mod:`otonas._torchvision`), so that a module (or
    transformers, under it) that imports torchvision gets the working one. A module that is not
    found, or fails while importing, is a one-line error naming it."""
    from ._torchvision import prepare_torchvision

    prefix, _, name = spec.partition(":")
    prepare_torchvision()
    try:
        module = importlib.import_module(prefix)
    except ModuleNotFoundError as e:
        if e.name is not None and (prefix == e.name or prefix.startswith(e.name + ".")):
            raise UsageError(f"MODEL {spec!r}: cannot import module {prefix!r} ({e}); check the name and that "
                             "it is on PYTHONPATH") from None
        raise UserCodeError(f"MODEL {spec!r}: importing module {prefix!r} failed: {_one_line(e)}; install "
                            f"{e.name!r} or fix the import (rerun with --debug for the traceback)") from e
    except Exception as e:  # SyntaxError, an exception at import time, ...
        where = ""
        tb = e.__traceback__
        while tb is not None:  # the innermost frame of the user's code
            where = f" at {tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
            tb = tb.tb_next
        if isinstance(e, SyntaxError) and e.filename:
            where = f" at {e.filename}:{e.lineno}"
        raise UserCodeError(f"MODEL {spec!r}: importing module {prefix!r} failed{where}: {_one_line(e)} "
                            "(rerun with --debug for the traceback)") from e
    fn = getattr(module, name, None)
    if fn is None or not callable(fn):
        raise UsageError(f"MODEL {spec!r}: module {prefix!r} has no callable {name!r}")
    return fn


def resolve_model(spec: str, *, kwargs: dict[str, Any] | str | None = None) -> ResolvedModel:
    """Build the model a MODEL string names; the default input shape where it is known."""
    if isinstance(kwargs, str):
        try:
            kwargs = json.loads(kwargs) if kwargs.strip() else {}
        except json.JSONDecodeError as e:
            raise UsageError(f"--model-kwargs is not valid JSON ({e.msg}); write it like '{{\"num_classes\": 10}}'") from None
        if not isinstance(kwargs, dict):
            raise UsageError("--model-kwargs must be a JSON object, e.g. '{\"num_classes\": 10}'")
    kwargs = dict(kwargs or {})
    if ":" not in spec:
        raise UsageError(f"MODEL {spec!r} is not of the form torchvision:NAME, search_spaces:NAME, "
                         "transformers:CLASS or package.module:callable")
    prefix, name = spec.split(":", 1)
    dtype = torch.float32
    shape: tuple[int, ...] | None = None
    shapes: tuple[tuple[int, ...], ...] = ()
    try:
        if prefix == "torchvision":
            model, image_shapes = _torchvision_model(name, kwargs)
            shapes = tuple((2, *s) for s in image_shapes)
        elif prefix == "transformers":
            model, shape, dtype = _transformers_model(name, kwargs)
        elif prefix == "search_spaces":
            import search_spaces

            if name not in search_spaces.list():
                raise UsageError(f"search_spaces has no entry {name!r}; entries: {', '.join(search_spaces.list())}")
            model = search_spaces.create(name, **kwargs)
            info = search_spaces.info(name)
            tiny = kwargs.get("size") == "tiny"
            shape = tuple(info.tiny_input_shape if tiny else info.input_shape)
            if "in_chans" in kwargs and len(shape) == 3:
                shape = (int(kwargs["in_chans"]), *shape[1:])
            dtype = info.input_dtype
        else:
            fn = user_callable(spec)
            try:
                inspect.signature(fn).bind(**kwargs)
            except TypeError as e:
                raise UsageError(f"MODEL {spec!r} does not accept --model-kwargs {json.dumps(kwargs)}: {e}") from None
            except ValueError:  # no signature to read (a builtin): let the call say
                pass
            try:
                model = fn(**kwargs)
            except Exception as e:
                raise UserCodeError(f"MODEL {spec!r}: {name}({_call_args(kwargs)}) raised {_one_line(e)} "
                                    "(rerun with --debug for the traceback)") from e
            if not isinstance(model, nn.Module):
                raise UsageError(f"MODEL {spec!r}: {name}() returned {type(model).__name__}, not an nn.Module")
    except TypeError as e:
        raise UsageError(f"MODEL {spec!r} does not accept --model-kwargs {json.dumps(kwargs)}: {e}") from None
    except (UsageError, UserCodeError):
        raise
    except Exception as e:  # a torchvision / search_spaces constructor refusing its arguments
        raise UserCodeError(f"MODEL {spec!r}: its constructor raised {_one_line(e)} "
                            "(rerun with --debug for the traceback)") from e
    if shape is not None:
        shapes = ((2, *shape),)
    return ResolvedModel(spec, model, shapes, (dtype,) * len(shapes))


def example_inputs(model: nn.Module, shapes: tuple[tuple[int, ...], ...], dtypes: tuple[torch.dtype, ...],
                   *, batch: int | None = None, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Random inputs of the given shapes (token ids below the smallest embedding table for ints)."""
    gen = torch.Generator().manual_seed(seed)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for shape, dtype in zip(shapes, dtypes):
        if batch is not None:
            shape = (batch, *shape[1:])
        if dtype.is_floating_point:
            out.append(torch.randn(shape, generator=gen, dtype=dtype).to(device))
        else:
            vocab = min((m.num_embeddings for m in model.modules() if isinstance(m, nn.Embedding)), default=2)
            out.append(torch.randint(0, vocab, shape, generator=gen, dtype=dtype).to(device))
    return tuple(out)
