"""Model families, registered by name: ``get_family("qwen2_5").size("7B")``.

Each family lives in its own sub-package and registers itself on import; the list of
sub-packages below is the only place that names them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from pai_patch.models.base import ModelFamily

FAMILY_PACKAGES = ("qwen2_5", "qwen3", "llama2", "deepseek_v2")
_REGISTRY: dict[str, "ModelFamily"] = {}
F = TypeVar("F", bound=type)


def register(cls: F) -> F:
    """Class decorator: make a :class:`ModelFamily` subclass available by its ``name``."""
    _REGISTRY[cls.name] = cls()
    return cls


def _load_all() -> None:
    for pkg in FAMILY_PACKAGES:
        importlib.import_module(f"pai_patch.models.{pkg}")


def families() -> dict[str, "ModelFamily"]:
    _load_all()
    return dict(_REGISTRY)


def get_family(name: str) -> "ModelFamily":
    known = families()
    if name not in known:
        raise KeyError(f"unknown model family {name!r}; valid: {', '.join(sorted(known))}")
    return known[name]
