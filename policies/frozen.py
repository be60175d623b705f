"""A cheaper __init__ for the frozen dataclasses made on every message (facts, verdicts, records).

A frozen dataclass's generated __init__ stores each field through object.__setattr__ (its own
__setattr__ refuses): a call through the slot wrapper per field, about twice the cost of the whole
object otherwise (callgrind: DecisionRecord, 11 fields, 23.5k -> 11.8k instructions; issue 20).
`quick_init` gives the class an __init__ with the same parameters and defaults that writes the same
fields, in the same order, into the instance's __dict__ directly: the object is the same (fields,
equality, hash, repr, pickling, dataclasses.replace), only made faster. Pure: no I/O.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

_T = TypeVar("_T")


class _Factory:
    """Stands for "not given" where a field's default comes from a factory (as dataclasses' own)."""

    def __repr__(self) -> str:
        return "<factory>"


_FACTORY = _Factory()


def quick_init(cls: type[_T]) -> type[_T]:
    """Replace a frozen dataclass's __init__ (applied above @dataclass(frozen=True)). Refuses a class
    whose __init__ does more than store its fields, which this one would silently skip."""
    params = getattr(cls, "__dataclass_params__", None)
    if params is None or not params.frozen or not params.init:
        raise TypeError(f"quick_init: {cls.__name__} is not a frozen dataclass with an __init__")
    if hasattr(cls, "__post_init__") or "__slots__" in cls.__dict__:
        raise TypeError(f"quick_init: {cls.__name__} has __post_init__ or __slots__")
    fields = dataclasses.fields(cls)
    # An InitVar is a parameter of __init__ that is no field (dataclasses marks it in __dataclass_fields__).
    init_vars = any(f._field_type is dataclasses._FIELD_INITVAR for f in cls.__dataclass_fields__.values())  # type: ignore[attr-defined]
    if init_vars or any(not f.init or f.kw_only or f.name in ("self", "_qi_dict") for f in fields):
        raise TypeError(f"quick_init: {cls.__name__} has init=False, keyword-only or InitVar fields")
    namespace: dict[str, Any] = {"_FACTORY": _FACTORY}
    params_src: list[str] = []
    body: list[str] = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            namespace[f"_default_{f.name}"] = f.default
            params_src.append(f"{f.name}=_default_{f.name}")
        elif f.default_factory is not dataclasses.MISSING:
            namespace[f"_factory_{f.name}"] = f.default_factory
            params_src.append(f"{f.name}=_FACTORY")
            body.append(f"    if {f.name} is _FACTORY:\n        {f.name} = _factory_{f.name}()")
        else:
            params_src.append(f.name)
        body.append(f"    _qi_dict[{f.name!r}] = {f.name}")
    source = f"def __init__(self, {', '.join(params_src)}):\n    _qi_dict = self.__dict__\n" + "\n".join(body) + "\n"
    exec(source, namespace)  # noqa: S102 (the source is made from the class's own field names)
    init = namespace["__init__"]
    original = cls.__init__  # type: ignore[misc]
    init.__qualname__ = original.__qualname__
    init.__annotations__ = dict(getattr(original, "__annotations__", {}))
    init.__doc__ = original.__doc__
    cls.__init__ = init  # type: ignore[misc]
    return cls
