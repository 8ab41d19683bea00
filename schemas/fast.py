"""A fast path for decoding a message: msgspec structs generated from the pydantic models.

The pydantic models stay the one definition of every message (and of its JSON Schema). For the
stream worker's hot path, `fast_decoder(Model)` builds an equivalent msgspec struct from the
model's fields — their types, their bounds (`ge`, `le`, lengths, patterns), the model's
`str_max_length`, its after-validators — and decodes with it, about five times faster.

msgspec only ever *accepts* what the model accepts, with the same values (property-tested in
`tests/schemas/test_fast.py`); it may refuse some input the model takes (an integer beyond
64 bits, a timestamp format msgspec does not read). Whatever it refuses goes to the pydantic
model, which either accepts it after all or raises the `InvalidMessage` with the exact
dead-letter reason and detail it always did. A model using anything this module cannot
reproduce fails at import, never silently.
"""

from __future__ import annotations

import enum
import functools
import types
import typing
from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Generic, TypeVar, cast, get_args, get_origin

import annotated_types as at
import msgspec
from pydantic import AfterValidator, AwareDatetime, BaseModel
from pydantic.fields import FieldInfo

M = TypeVar("M", bound=BaseModel)

#: Bounds msgspec's `Meta` takes, by the annotated_types class that states them.
_BOUNDS: dict[type[Any], str] = {
    at.Ge: "ge",
    at.Le: "le",
    at.Gt: "gt",
    at.Lt: "lt",
    at.MinLen: "min_length",
    at.MaxLen: "max_length",
}


class UnsupportedModel(TypeError):
    """The model uses something the fast path cannot reproduce exactly."""


def _after(info: FieldInfo) -> list[Callable[[Any], Any]]:
    return [m.func for m in info.metadata if isinstance(m, AfterValidator)]  # type: ignore[misc]


def _meta(model: type[BaseModel], name: str, metadata: list[Any], base: Any) -> dict[str, Any]:
    """msgspec `Meta` arguments of a field's constraints (and the model's `str_max_length`)."""
    meta: dict[str, Any] = {}
    for m in metadata:
        if isinstance(m, AfterValidator):
            continue
        if isinstance(m, FieldInfo):  # an Annotated[..., Field(...)] inside a union
            meta |= _meta(model, name, list(m.metadata), base)
            continue
        key = _BOUNDS.get(type(m))
        if key is not None:
            meta[key] = getattr(m, key)
            continue
        pattern = getattr(m, "pattern", None)
        if pattern is not None and type(m).__name__ == "_PydanticGeneralMetadata":
            meta["pattern"] = pattern
            continue
        raise UnsupportedModel(f"{model.__name__}.{name}: constraint {m!r}")
    limit = model.model_config.get("str_max_length")
    if base is str and limit is not None:
        meta["max_length"] = min(meta.get("max_length", limit), limit)
    return meta


def _type(
    model: type[BaseModel], name: str, annotation: Any, metadata: list[Any], top: bool = False
) -> Any:
    """The msgspec type of a field's type with its constraints `metadata`. A timestamp only
    as the `top` type of a top-level field (where `FastDecoder` parses it)."""
    if get_origin(annotation) is Annotated:
        base, *extra = get_args(annotation)
        if any(isinstance(m, AfterValidator) for m in extra):
            raise UnsupportedModel(f"{model.__name__}.{name}: a validator inside a type")
        return _type(model, name, base, [*metadata, *extra])
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _type(model, name, rest[0], metadata) | None
        raise UnsupportedModel(f"{model.__name__}.{name}: a union {annotation!r}")
    kind: Any
    if annotation in (str, int, float, bool):
        kind = annotation
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        kind = annotation  # by value, as the model reads it
    elif annotation is AwareDatetime and top:
        # Read as text of the one common form, parsed after (`_aware`): msgspec's own
        # datetimes round a seventh fractional digit where pydantic cuts it.
        kind = Annotated[str, msgspec.Meta(pattern=_RFC3339)]
    elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
        kind = _struct(annotation, nested=True)
    elif origin is list and len(args) == 1:
        kind = list[_type(model, name, args[0], [])]  # type: ignore[misc]
    else:
        raise UnsupportedModel(f"{model.__name__}.{name}: type {annotation!r}")
    meta = _meta(model, name, metadata, annotation)
    return Annotated[kind, msgspec.Meta(**meta)] if meta else kind


_STRUCTS: dict[type[BaseModel], type[msgspec.Struct]] = {}
#: The timestamps the fast path reads itself (anything else goes to the model): date, time
#: to the second, at most six fractional digits, an explicit offset.
_RFC3339 = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]{1,6})?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})$"
)


def _aware(text: str) -> datetime:
    """An `AwareDatetime` from text `_RFC3339` matched (a ValueError for an impossible
    date or offset: the model decides those)."""
    return datetime.fromisoformat(text)


def _struct(model: type[BaseModel], nested: bool = False) -> type[msgspec.Struct]:
    """The msgspec struct of `model` (made once), with the fields' names and order. The
    after-validators of a `nested` model's fields would not run: refused."""
    found = _STRUCTS.get(model)
    if found is not None:
        if nested and any(_after(i) for i in model.model_fields.values()):
            raise UnsupportedModel(f"{model.__name__}: validators in a nested model")
        return found
    config = model.model_config
    if config.get("extra", "ignore") != "ignore" or not config.get("strict"):
        raise UnsupportedModel(f"{model.__name__}: only strict models that ignore extra fields")
    if config.get("allow_inf_nan", True):
        raise UnsupportedModel(f"{model.__name__}: infinite and NaN floats allowed")
    decorators = model.__pydantic_decorators__
    if any(
        getattr(decorators, kind)
        for kind in ("validators", "field_validators", "root_validators", "model_validators")
    ):
        raise UnsupportedModel(f"{model.__name__}: validators of its own")
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for name, info in model.model_fields.items():
        if info.alias not in (None, name):
            raise UnsupportedModel(f"{model.__name__}.{name}: an alias")
        if nested and (_after(info) or info.annotation is AwareDatetime):
            raise UnsupportedModel(f"{model.__name__}.{name}: a conversion in a nested model")
        kind = _type(model, name, info.annotation, list(info.metadata), top=not nested)
        if info.default_factory is not None:
            fields.append((name, kind, msgspec.field(default_factory=info.default_factory)))  # type: ignore[arg-type]
        elif not info.is_required():
            fields.append((name, kind, info.default))
        else:
            fields.append((name, kind))
    struct = msgspec.defstruct(f"Fast{model.__name__}", fields, kw_only=True)
    _STRUCTS[model] = struct
    return struct


def _chain(funcs: list[Callable[[Any], Any]]) -> Callable[[Any], Any]:
    def convert(v: Any) -> Any:
        for f in funcs:
            v = f(v)
        return v

    return funcs[0] if len(funcs) == 1 else convert


def _conversion(info: FieldInfo) -> Callable[[Any], Any] | None:
    """What turns a field's decoded value into the model's: its after-validators, after
    parsing a timestamp's text. A timestamp's are cached by the text (parsing and the
    validators are pure; the events of one second share their timestamp)."""
    if info.annotation is AwareDatetime:
        return functools.lru_cache(maxsize=4096)(_chain([_aware, *_after(info)]))
    after = _after(info)
    return _chain(after) if after else None


class FastDecoder(Generic[M]):
    """Decodes `model`'s JSON into its msgspec struct (attributes as the model's; its
    methods are not there), or, for what msgspec refuses, with `fallback` (the model's own
    decoding, which raises the message's error)."""

    def __init__(self, model: type[M], fallback: Callable[[bytes], M]) -> None:
        self.model = model
        self.fallback = fallback
        self.struct = _struct(model)
        self._decode = msgspec.json.Decoder(self.struct).decode
        conversions = ((n, _conversion(i)) for n, i in model.model_fields.items())
        self._convert = [(n, c) for n, c in conversions if c is not None]
        self.fallbacks = 0  # input msgspec refused (then the model decided)

    def __call__(self, data: bytes | None) -> M:
        if not data:  # a tombstone, or nothing: the model says what is wrong
            return self.fallback(b"")
        try:
            value = self._decode(data)
        except (msgspec.ValidationError, msgspec.DecodeError):
            self.fallbacks += 1
            return self.fallback(data)
        try:
            for name, convert in self._convert:
                setattr(value, name, convert(getattr(value, name)))
        except ValueError:
            self.fallbacks += 1
            return self.fallback(data)
        # The struct has the model's attributes: the stream reads it as it would the model.
        return cast(M, value)


def fast_decoder(model: type[M]) -> FastDecoder[M]:
    """A `FastDecoder` of `model` that leaves what msgspec refuses to `decode_message`."""
    from schemas.messages import decode_message

    return FastDecoder(model, lambda data: decode_message(model, data))
