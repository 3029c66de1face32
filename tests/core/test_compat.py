"""MixCache with what users combine it with (docs/compatibility.md), on tiny real Wan pipelines:
group offloading, regional and whole-model compilation, quantized weights, LoRA adapters and
a bf16 model with a bf16 cache."""

from __future__ import annotations

import pytest
import torch

from mixcache import MixCacheConfig, apply_mixcache
from mixcache_lab.tiny import make_tiny_wan_pipeline, tiny_call_kwargs

FAST = MixCacheConfig.preset("fast")  # a speed budget: it reuses on a random tiny model too


def generate(pipe, steps=10):
    kwargs = tiny_call_kwargs("wan", num_inference_steps=steps)
    return pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).frames


def records(stats):
    return [(r.step, r.branch, r.action, r.blocks_computed, r.reason) for r in stats.records]


def cached_run(pipe, config=FAST, steps=10):
    """Output and stats of one cached generation; MixCache is removed afterwards."""
    handle = apply_mixcache(pipe, config)
    try:
        out = generate(pipe, steps)
    finally:
        stats = handle.stats()
        handle.remove()
    return out, stats


@pytest.fixture(scope="module")
def plain_cached():
    """The reference: the cached run on a fresh tiny Wan pipeline, and its uncached output."""
    pipe = make_tiny_wan_pipeline()
    uncached = generate(pipe)
    out, stats = cached_run(pipe)
    assert any(r.action != "compute" for r in stats.records)  # it reuses
    return uncached, out, stats


# -------------------------------------------------------------------------- group offloading
@pytest.mark.parametrize("offload_type", ["block_level", "leaf_level"])
@pytest.mark.parametrize("order", ["offload_then_mixcache", "mixcache_then_offload"])
def test_group_offload_same_outputs_and_decisions(plain_cached, offload_type, order):
    uncached, ref, ref_stats = plain_cached
    pipe = make_tiny_wan_pipeline()
    cpu = torch.device("cpu")
    kw = {"onload_device": cpu, "offload_device": cpu, "offload_type": offload_type}
    if offload_type == "block_level":
        kw["num_blocks_per_group"] = 1
    if order == "offload_then_mixcache":
        pipe.transformer.enable_group_offload(**kw)
        handle = apply_mixcache(pipe, FAST)
    else:
        handle = apply_mixcache(pipe, FAST)
        pipe.transformer.enable_group_offload(**kw)
    out = generate(pipe)
    assert records(handle.stats()) == records(ref_stats)
    assert torch.equal(out, ref)
    handle.remove()
    assert torch.equal(generate(pipe), uncached)  # removal is exact under the offload hooks


# -------------------------------------------------------------------------- compilation
def _graphs() -> int:
    from torch._dynamo.utils import counters

    return counters["stats"]["unique_graphs"]


def _reset_dynamo() -> None:
    """Forget compiled code and the graph counter (``reset`` leaves the counters)."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()


def _compiled_counts(with_mixcache: bool, steps: int, backend: str) -> tuple[int, int, object]:
    """(graphs after one generation, graphs after a second, stats) with regional compilation."""
    pipe = make_tiny_wan_pipeline()
    handle = apply_mixcache(pipe, FAST) if with_mixcache else None
    _reset_dynamo()
    pipe.transformer.compile_repeated_blocks(backend=backend)
    try:
        generate(pipe, steps)
        first = _graphs()
        generate(pipe, steps)
        second = _graphs()
        stats = handle.stats() if handle else None
    finally:
        if handle:
            handle.remove()
        _reset_dynamo()
    return first, second, stats


@pytest.mark.slow
def test_regional_compilation_compiles_what_it_does_without_mixcache():
    # Inductor, as users run it; 6 steps so the run reuses (2 warm-up, 2 final computes).
    plain, _, _ = _compiled_counts(False, 6, "inductor")
    cached, again, stats = _compiled_counts(True, 6, "inductor")
    assert plain == 1
    assert cached == plain  # no recompile on MixCache's per-block state
    assert again == cached  # nor in a later generation
    assert any(r.action != "compute" for r in stats.records)


def test_regional_compilation_keeps_decisions_and_outputs():
    pipe = make_tiny_wan_pipeline()
    eager, eager_stats = cached_run(pipe, steps=6)
    _reset_dynamo()
    pipe.transformer.compile_repeated_blocks(backend="eager")
    try:
        out, stats = cached_run(pipe, steps=6)
        assert _graphs() == 1
    finally:
        _reset_dynamo()
    assert records(stats) == records(eager_stats)
    torch.testing.assert_close(out, eager)


def test_whole_model_compile_stays_within_the_recompile_limit():
    pipe = make_tiny_wan_pipeline()
    eager, eager_stats = cached_run(pipe, steps=8)
    handle = apply_mixcache(pipe, FAST)
    _reset_dynamo()
    compiled = torch.compile(pipe.transformer, backend="eager")
    original, pipe.transformer = pipe.transformer, compiled
    try:
        out = generate(pipe, 8)
        first = _graphs()
        generate(pipe, 8)
        second = _graphs()
        stats = handle.stats()
    finally:
        pipe.transformer = original
        handle.remove()
        _reset_dynamo()
    assert records(stats) == records(eager_stats)
    torch.testing.assert_close(out, eager)
    # Graphs around the block loop plus the one block graph, the same in every generation and
    # far below dynamo's recompile limit (8 per code object).
    assert first <= 4 and second == first


# -------------------------------------------------------------------------- quantized weights
def test_quanto_int8_weights_reuse_and_remove_exactly(plain_cached):
    quanto = pytest.importorskip("optimum.quanto", reason="optimum-quanto is not installed")
    _, float_out, float_stats = plain_cached
    pipe = make_tiny_wan_pipeline()
    quanto.quantize(pipe.transformer, weights=quanto.qint8)
    quanto.freeze(pipe.transformer)
    uncached = generate(pipe)
    out, stats = cached_run(pipe)
    assert any(r.action != "compute" for r in stats.records)
    assert not torch.equal(out, uncached)  # the reuse acted on the quantized model
    # Same decisions as the float run (int8 weights move the signals by ~0.3 %), and outputs
    # within what int8 weights change.
    assert [r.action for r in stats.records] == [r.action for r in float_stats.records]
    assert ((out - float_out).abs().mean() / float_out.abs().mean()).item() < 0.02
    assert torch.equal(generate(pipe), uncached)


# -------------------------------------------------------------------------- LoRA
@pytest.mark.parametrize("order", ["lora_then_mixcache", "mixcache_then_lora"])
def test_lora_adapter_reuses_and_removes_exactly(order):
    peft = pytest.importorskip("peft", reason="peft is not installed")
    pipe = make_tiny_wan_pipeline()
    base = generate(pipe)

    def add_lora():
        torch.manual_seed(1)  # a non-zero adapter: init_lora_weights=False draws B too
        lora = peft.LoraConfig(
            r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v"], init_lora_weights=False
        )
        pipe.transformer.add_adapter(lora)

    if order == "lora_then_mixcache":
        add_lora()
        uncached = generate(pipe)
        handle = apply_mixcache(pipe, FAST)
    else:
        handle = apply_mixcache(pipe, FAST)
        add_lora()
        handle.remove()
        uncached = generate(pipe)  # the LoRA model without MixCache
        handle = apply_mixcache(pipe, FAST)
    assert not torch.equal(uncached, base)  # the adapter is active
    out = generate(pipe)
    stats = handle.stats()
    handle.remove()
    assert any(r.action != "compute" for r in stats.records)
    assert not torch.equal(out, uncached)  # reuse changed something ...
    assert ((out - uncached).abs().mean() / uncached.abs().mean()).item() < 0.5  # ... not all
    assert torch.equal(generate(pipe), uncached)


# -------------------------------------------------------------------------- bf16
def _entry_peak(pipe, config):
    """Output, stats and the peak bytes of the reusable entries of one cached generation."""
    handle = apply_mixcache(pipe, config)
    ctrl = handle.controllers["transformer"]
    peak = [0]
    end_forward = ctrl.end_forward

    def spy(output):
        end_forward(output)
        peak[0] = max(peak[0], ctrl._entry_bytes())

    ctrl.end_forward = spy
    try:
        out = generate(pipe)
    finally:
        stats = handle.stats()
        handle.remove()
    return out, stats, peak[0]


def test_bf16_model_with_bf16_cache_halves_the_bytes_and_decides_the_same():
    pipe = make_tiny_wan_pipeline(dtype=torch.bfloat16)
    out32, stats32, bytes32 = _entry_peak(pipe, FAST.replace(cache_dtype="float32"))
    out16, stats16, bytes16 = _entry_peak(pipe, FAST.replace(cache_dtype="bfloat16"))
    assert torch.isfinite(out16).all()
    assert any(r.action != "compute" for r in stats16.records)
    assert [r.action for r in stats16.records] == [r.action for r in stats32.records]
    # The entries halve (the step probe's copies of the model input and output keep theirs).
    assert bytes16 > 0 and bytes16 * 2 == bytes32
    assert stats16.cache_bytes < stats32.cache_bytes
    assert ((out16.float() - out32.float()).abs().mean() / out32.float().abs().mean()) < 0.02
