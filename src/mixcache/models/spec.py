"""ModelSpec: where a transformer's blocks are and how they pass hidden states."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "ArgRef",
    "ModelSpec",
    "find_spec",
    "register",
    "registered_specs",
    "supported_class_names",
]


@dataclass(frozen=True)
class ArgRef:
    """An argument passed either positionally at ``index`` or by keyword ``name``."""

    index: int
    name: str

    def get(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self.name in kwargs:
            return kwargs[self.name]
        if len(args) > self.index:
            return args[self.index]
        return None


@dataclass(frozen=True)
class ModelSpec:
    """How MixCache hooks one transformer family.

    Attributes:
        family: short name, also names the shipped impact profile (``profiles/<family>.json``).
        class_names: the supported transformer classes (for messages).
        load_classes: returns the classes (imported lazily, diffusers is heavy).
        block_lists: attribute names of the ``nn.ModuleList``s of blocks, in execution order; they
            form ONE linear stack (a reused span may cross from one list into the next).
        hidden: the blocks' hidden-states argument; ``encoder``: their encoder-states argument.
        returns_encoder: blocks return ``(hidden_states, encoder_hidden_states)`` (else a tensor).
        model_input, timestep: the transformer forward's latent and timestep arguments.
    """

    family: str
    class_names: tuple[str, ...]
    load_classes: Callable[[], tuple[type, ...]]
    block_lists: tuple[str, ...]
    hidden: ArgRef = ArgRef(0, "hidden_states")
    encoder: ArgRef | None = ArgRef(1, "encoder_hidden_states")
    returns_encoder: bool = False
    model_input: ArgRef = ArgRef(0, "hidden_states")
    timestep: ArgRef = ArgRef(1, "timestep")

    def blocks(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks of ``module`` as one list, in execution order."""
        out: list[torch.nn.Module] = []
        for attr in self.block_lists:
            out.extend(getattr(module, attr, None) or [])
        return out


_REGISTRY: list[ModelSpec] = []


def register(spec: ModelSpec) -> ModelSpec:
    """Register a family (called once at import of its file)."""
    _REGISTRY.append(spec)
    return spec


def registered_specs() -> tuple[ModelSpec, ...]:
    return tuple(_REGISTRY)


def supported_class_names() -> list[str]:
    return [name for spec in _REGISTRY for name in spec.class_names]


def find_spec(module: Any) -> ModelSpec | None:
    """The spec whose classes ``module`` is an instance of (None: unsupported)."""
    for spec in _REGISTRY:
        if isinstance(module, spec.load_classes()):
            return spec
    return None
