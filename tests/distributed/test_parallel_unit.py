"""mixcache.parallel in one process: group discovery, lazy signals, hook order (no collectives).

The behaviour under real context parallelism (two processes) is in test_context_parallel.py;
these are the pieces that need no process group, so they run with the rest of the suite.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.context_parallel import apply_context_parallel
from diffusers.models._modeling_parallel import ContextParallelConfig

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.errors import UnsupportedModelError
from mixcache.parallel import (
    ParallelSignals,
    sequence_parallel_group,
    sequence_ranks,
    sketch_of,
)
from mixcache.stats import CacheStats

CP_BLOCK_HOOK = "cp_input---blocks.0"


class _Mesh:
    def __init__(self, group: str) -> None:
        self.group = group

    def get_group(self) -> str:
        return self.group


def _parallel_config(cp: str | None = None, tp: str | None = None) -> SimpleNamespace:
    """What diffusers records as ``model._parallel_config`` (only the fields MixCache reads)."""
    return SimpleNamespace(
        context_parallel_config=SimpleNamespace(_flattened_mesh=_Mesh(cp)) if cp else None,
        tensor_parallel_config=SimpleNamespace(_mesh=_Mesh(tp)) if tp else None,
    )


def _tiny_wan() -> torch.nn.Module:
    from mixcache_lab.tiny import make_tiny_wan_pipeline

    return make_tiny_wan_pipeline(num_layers=3).transformer


def test_group_is_the_context_parallel_mesh_not_the_world():
    module = torch.nn.Linear(2, 2)
    assert sequence_parallel_group(module) is None
    module._parallel_config = _parallel_config(cp="cp-group", tp="tp-group")
    assert sequence_parallel_group(module) == "cp-group"
    module._parallel_config = _parallel_config(tp="tp-group")
    assert sequence_parallel_group(module) == "tp-group"
    module._parallel_config = _parallel_config()
    assert sequence_parallel_group(module) is None


def test_signals_find_a_group_set_after_apply_and_an_explicit_group_wins():
    module = torch.nn.Linear(2, 2)
    signals = ParallelSignals(module)
    assert signals.process_group is None  # not parallel (yet): reduced locally
    module._parallel_config = _parallel_config(cp="cp-group")  # enable_parallelism, later
    assert signals.process_group == "cp-group"
    assert ParallelSignals(module, "user-group").process_group == "user-group"


def test_not_distributed_counts_one_rank():
    module = torch.nn.Linear(2, 2)
    module._parallel_config = _parallel_config(cp="cp-group")
    assert sequence_ranks(module, SimpleNamespace(process_group=None)) == 1


def _with_cp_hooks(transformer: torch.nn.Module) -> None:
    """diffusers' own context-parallel hooks, as enable_parallelism registers them (the config is
    only read inside a forward, which these tests do not run)."""
    apply_context_parallel(
        transformer, ContextParallelConfig(ulysses_degree=2), transformer._cp_plan
    )


def _order(module: torch.nn.Module) -> list[str]:
    return list(module._diffusers_hook._hook_order)


def test_applied_after_context_parallel_mixcache_hooks_sit_inside():
    transformer = _tiny_wan()
    _with_cp_hooks(transformer)
    assert _order(transformer.blocks[0]) == [CP_BLOCK_HOOK]
    handle = apply_mixcache(transformer, "fast")
    # The last registered hook is the outermost: the split must run before MixCache's block hook.
    assert _order(transformer.blocks[0]) == ["mixcache_block", CP_BLOCK_HOOK]
    assert _order(transformer) == ["mixcache_transformer", "cp_input---"]
    assert _order(transformer.proj_out) == ["cp_output---proj_out"]
    handle.remove()
    assert _order(transformer.blocks[0]) == [CP_BLOCK_HOOK]
    assert _order(transformer) == ["cp_input---"]


def test_applied_before_context_parallel_gives_the_same_order():
    transformer = _tiny_wan()
    handle = apply_mixcache(transformer, "fast")
    _with_cp_hooks(transformer)
    assert _order(transformer.blocks[0]) == ["mixcache_block", CP_BLOCK_HOOK]
    assert _order(transformer) == ["mixcache_transformer", "cp_input---"]
    handle.remove()
    assert _order(transformer.blocks[0]) == [CP_BLOCK_HOOK]


class _Other(ModelHook):
    pass


def test_foreign_hook_above_context_parallel_is_refused_at_apply_time():
    transformer = _tiny_wan()
    _with_cp_hooks(transformer)
    HookRegistry.check_if_exists_or_initialize(transformer.blocks[0]).register_hook(
        _Other(), "other"
    )
    with pytest.raises(UnsupportedModelError, match="before enable_parallelism"):
        apply_mixcache(transformer, "fast")
    assert _order(transformer.blocks[0]) == [CP_BLOCK_HOOK, "other"]  # left as it was
    assert _order(transformer) == ["cp_input---"]  # lifted, then put back
    assert not any(hasattr(b, "_diffusers_hook") for b in transformer.blocks[1:])


def test_summary_says_bytes_are_per_rank():
    parallel = CacheStats(cache_bytes=2048, ranks=2)
    assert "2.0 KiB per rank (sequence split over 2 ranks" in parallel.summary()
    assert parallel.to_dict()["ranks"] == 2
    assert "per rank" not in CacheStats(cache_bytes=2048).summary()


@pytest.mark.parametrize("ranks", [1, 2, 3, 4])
def test_shards_sketch_exactly_the_tokens_one_process_sketches(ranks):
    for n in (1, 2, 5, 16):  # tokens per shard
        for tokens in (1, 3, 4, 7, 64):
            whole = torch.arange(n * ranks, dtype=torch.float32).reshape(1, -1, 1)
            stride = max(1, whole.shape[1] // tokens)
            expected = whole[:, ::stride][:, :tokens]  # the single-process sample
            shards = whole.chunk(ranks, dim=1)
            got = torch.cat([sketch_of(s, tokens, r, ranks) for r, s in enumerate(shards)], 1)
            assert torch.equal(got, expected), (n, tokens, ranks)


def _one_forward(transformer: torch.nn.Module, max_cache_bytes: int) -> object:
    """A controller on ``transformer`` after one full compute (it stores its entries), before
    the reduction that would come with the next forward's decision."""
    config = MixCacheConfig.preset("balanced").replace(max_cache_bytes=max_cache_bytes)
    handle = apply_mixcache(transformer, config)
    torch.manual_seed(0)
    x, text = torch.randn(1, 16, 3, 4, 4), torch.randn(1, 8, 32)
    with torch.no_grad(), transformer.cache_context("cond"):
        transformer(hidden_states=x, encoder_hidden_states=text, timestep=torch.tensor([500.0]))
    return handle.controllers["transformer"]


def test_ranks_over_and_under_the_byte_limit_reduce_the_same_values(monkeypatch):
    """One rank over ``max_cache_bytes`` (limit 0), one under it (a limit never reached): they
    queue as many values for the one all-reduce (else it would hang), and the entries the first
    rank could not keep are dropped by the second at that reduction (else their decisions, and
    the collectives of the next forward, would differ)."""
    import copy

    import torch.distributed as dist

    base = _tiny_wan()
    over = _one_forward(copy.deepcopy(base), max_cache_bytes=0)
    under = _one_forward(copy.deepcopy(base), max_cache_bytes=1 << 40)
    assert over._entry_bytes() == 0 and under._entry_bytes() > 0  # each rank's limit acted
    stored = len(under.step.entries()) + len(under.block.entries())
    assert stored > 0 and over.run.over_budget == stored and under.run.over_budget == 0
    assert len(over._pending) == len(under._pending) > 0

    reduced: list[torch.Tensor] = []

    def all_reduce(flat: torch.Tensor, group: object = None) -> None:
        # Two ranks: the first to arrive records its values, the second gets the sum (what
        # every rank gets from a real all-reduce; the first's outcome is the same either way).
        if reduced:
            flat += reduced[0]  # a different count of values fails here, where dist would hang
        reduced.append(flat.clone())

    monkeypatch.setattr(dist, "all_reduce", all_reduce)
    for ctrl in (over, under):
        ctrl._pending.process_group = "cp-group"
        assert ctrl._pending.flush() > 0
    assert under._entry_bytes() == 0 and under.run.over_budget == stored  # dropped like `over`
    assert over.run.nonfinite == under.run.nonfinite == 0  # the finite checks were not confused
