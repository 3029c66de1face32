"""ModelSpec: where a transformer's blocks are and how they pass hidden states.

A family file states only what is special about its model: what diffusers itself knows (the block
lists its caches look for, ``diffusers.hooks._common``; what a block returns,
``diffusers.hooks._helpers.TransformerBlockRegistry``) is read from diffusers when the spec is
resolved for a module (:meth:`ModelSpec.resolved`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import UnsupportedModelError

__all__ = [
    "ArgRef",
    "BatchLayout",
    "ModelSpec",
    "check_supported",
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
class BatchLayout:
    """How a pipeline batches cond and uncond into ONE transformer forward.

    Read from the pipelines' ``__call__`` (never guessed from shapes): under
    ``cache_context(context)`` they concatenate ``[negative, positive]`` along dim 0
    (``uncond_first``), so with ``num_videos_per_prompt = n`` and ``p`` prompts the first
    ``p * n`` items are uncond. ``batch_args`` are the forward's arguments that carry that batch
    dimension (sliced per half); every other argument is shared by both halves.
    """

    batch_args: tuple[str, ...]
    uncond_first: bool = True
    context: str = "cond_uncond"


#: The layout of pipelines that also pass the text attention mask (LTX-Video, Mochi).
MASKED_TEXT_BATCH = BatchLayout(
    batch_args=("hidden_states", "encoder_hidden_states", "timestep", "encoder_attention_mask")
)


@dataclass(frozen=True)
class ModelSpec:
    """How MixCache hooks one transformer family.

    Attributes:
        family: short name, also names the shipped impact profile (``profiles/<family>.json``).
        class_names: the supported transformer classes (for messages).
        load_classes: returns the classes (imported lazily, diffusers is heavy); ``None``: the
            diffusers classes named in ``class_names``.
        block_lists: attribute names of the ``nn.ModuleList``s of blocks, in execution order; they
            form ONE linear stack (a reused span may cross from one list into the next). ``None``:
            the block-list names diffusers' own caches use, in diffusers' order, that the module
            has.
        hidden: the blocks' hidden-states argument; ``encoder``: their encoder-states argument.
        returns_encoder: blocks return ``(hidden_states, encoder_hidden_states)`` (else a tensor).
            ``None``: from diffusers' ``TransformerBlockRegistry`` for the block class.
        model_input, timestep: the transformer forward's latent and timestep arguments.
        batch_layout: set for families whose pipelines batch cond and uncond into one forward.
        refused: why MixCache cannot follow this transformer class (apply_mixcache raises it).
        refused_pipelines: ``(pipeline class name, reason)`` pairs refused at apply time.
    """

    family: str
    class_names: tuple[str, ...]
    load_classes: Callable[[], tuple[type, ...]] | None = None
    block_lists: tuple[str, ...] | None = None
    hidden: ArgRef = ArgRef(0, "hidden_states")
    encoder: ArgRef | None = ArgRef(1, "encoder_hidden_states")
    returns_encoder: bool | None = None
    model_input: ArgRef = ArgRef(0, "hidden_states")
    timestep: ArgRef = ArgRef(1, "timestep")
    batch_layout: BatchLayout | None = None
    refused: str | None = None
    refused_pipelines: tuple[tuple[str, str], ...] = ()

    def classes(self) -> tuple[type, ...]:
        """The transformer classes: ``load_classes()``, or diffusers' classes named in
        ``class_names`` (imported on first use; a name this diffusers lacks matches nothing)."""
        if self.load_classes is not None:
            return self.load_classes()
        import diffusers

        found = (getattr(diffusers, name, None) for name in self.class_names)
        return tuple(c for c in found if isinstance(c, type))

    def blocks(self, module: torch.nn.Module) -> list[torch.nn.Module]:
        """The blocks of ``module`` as one list, in execution order."""
        out: list[torch.nn.Module] = []
        for attr in self.block_lists or _diffusers_block_lists(module):
            out.extend(getattr(module, attr, None) or [])
        return out

    def resolved(self, module: torch.nn.Module) -> ModelSpec:
        """This spec with ``block_lists`` and ``returns_encoder`` filled in for ``module``."""
        lists = self.block_lists or _diffusers_block_lists(module)
        returns_encoder = self.returns_encoder
        if returns_encoder is None:
            blocks = self.blocks(module)
            returns_encoder = _registry_returns_encoder(blocks[0]) if blocks else False
        return replace(self, block_lists=lists, returns_encoder=returns_encoder)


def _diffusers_block_lists(module: torch.nn.Module) -> tuple[str, ...]:
    """The block-list attributes diffusers' caches hook (``_SPATIAL_TRANSFORMER_BLOCK_IDENTIFIERS``,
    in its order: ``blocks``, ``transformer_blocks``, ``single_transformer_blocks``, ...)."""
    from diffusers.hooks._common import _SPATIAL_TRANSFORMER_BLOCK_IDENTIFIERS

    return tuple(
        name
        for name in _SPATIAL_TRANSFORMER_BLOCK_IDENTIFIERS
        if isinstance(getattr(module, name, None), torch.nn.ModuleList)
    )


def _registry_returns_encoder(block: torch.nn.Module) -> bool:
    """Whether ``block`` returns ``(hidden, encoder)``, from diffusers' block registry.

    A block class diffusers does not register is taken to return the hidden states alone (what
    most blocks do); a family whose unregistered blocks return a tuple says so in its file.
    """
    from diffusers.hooks._helpers import TransformerBlockRegistry

    try:
        meta = TransformerBlockRegistry.get(type(block))
    except ValueError:
        return False
    if meta.return_hidden_states_index != 0:
        raise UnsupportedModelError(
            f"{type(block).__name__} returns its hidden states at index "
            f"{meta.return_hidden_states_index}; MixCache expects them first"
        )
    return meta.return_encoder_hidden_states_index is not None


_REGISTRY: list[ModelSpec] = []


def register(spec: ModelSpec) -> ModelSpec:
    """Register a family (called once at import of its file)."""
    _REGISTRY.append(spec)
    return spec


def registered_specs() -> tuple[ModelSpec, ...]:
    return tuple(_REGISTRY)


def supported_class_names() -> list[str]:
    """Class names of the supported (not refused) transformers."""
    return [name for spec in _REGISTRY if spec.refused is None for name in spec.class_names]


def find_spec(module: Any) -> ModelSpec | None:
    """The spec whose classes ``module`` is an instance of, resolved for it (None: unknown).

    The first registered match wins: register a subclass's spec before its base class's.
    """
    for spec in _REGISTRY:
        if isinstance(module, spec.classes()):
            return spec if spec.refused else spec.resolved(module)
    return None


def check_supported(module: Any, pipeline: Any = None) -> ModelSpec:
    """The resolved spec of ``module`` run by ``pipeline``, or :class:`UnsupportedModelError`
    saying why MixCache cannot follow it (unknown class, refused class, refused pipeline)."""
    spec = find_spec(module)
    name = type(module).__name__
    if spec is None:
        raise UnsupportedModelError(
            f"{name} is not supported by MixCache; supported transformer classes: "
            f"{', '.join(supported_class_names())} (see docs/models.md)"
        )
    if spec.refused:
        raise UnsupportedModelError(f"{name} is not supported by MixCache: {spec.refused}")
    pipe_name = type(pipeline).__name__ if pipeline is not None else None
    for refused_name, reason in spec.refused_pipelines:
        if pipe_name == refused_name:
            raise UnsupportedModelError(
                f"{pipe_name} is not supported by MixCache (its transformer {name} is): {reason}"
            )
    return spec
