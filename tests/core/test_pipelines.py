"""Tiny real WanPipeline / HunyuanVideoPipeline (built offline from configs), comparing latents."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_configs import TINY_BALANCED, TINY_FAST, TINY_QUALITY

from mixcache import apply_mixcache, remove_mixcache
from mixcache_lab.tiny import tiny_call_kwargs

PROMPT = "a red circle moving right"
TRUE_CFG = {"true_cfg_scale": 3.0, "negative_prompt": "blurry low quality video"}


def generate(pipe, family, steps=12, seed=0, prompt=PROMPT, **kw):
    kwargs = tiny_call_kwargs(family, num_inference_steps=steps, **kw)
    return pipe(prompt, generator=torch.Generator().manual_seed(seed), **kwargs).frames


def rel_err(a, b):
    return ((a - b).abs().mean() / b.abs().mean()).item()


class Applied:
    """Context manager: apply on enter, always remove on exit (fixtures are session-scoped)."""

    def __init__(self, pipe, config):
        self.pipe, self.config = pipe, config

    def __enter__(self):
        self.handle = apply_mixcache(self.pipe, self.config)
        return self.handle

    def __exit__(self, *exc):
        self.handle.remove()


NO_REUSE = TINY_FAST.replace(dry_run=True)


@pytest.mark.parametrize(
    ("family", "kw"),
    [("wan", {}), ("wan", {"guidance_scale": 1.0}), ("hunyuan", {}), ("hunyuan", TRUE_CFG)],
)
def test_reuse_forbidden_is_bit_identical(request, family, kw):
    pipe = request.getfixturevalue(f"tiny_{family}_pipe")
    ref = generate(pipe, family, **kw)
    with Applied(pipe, NO_REUSE) as h:
        out = generate(pipe, family, **kw)
    assert torch.equal(out, ref)
    stats = h.stats()
    assert stats.compute_fraction == 1.0 and stats.records
    assert any("dry run (would:" in r.reason for r in stats.records)  # decisions still recorded


def test_apply_remove_is_bit_exact_and_leaves_no_attributes(tiny_wan_pipe):
    pipe = tiny_wan_pipe
    ref = generate(pipe, "wan")
    t = pipe.transformer
    before = {n: set(vars(m)) for n, m in t.named_modules()}
    with Applied(pipe, TINY_FAST):
        cached = generate(pipe, "wan")
    assert not torch.equal(cached, ref)
    after = {n: set(vars(m)) for n, m in t.named_modules()}
    extra = {n: after[n] - before[n] for n in after if after[n] - before[n]}
    assert set(extra) <= {""} and extra.get("", set()) <= {"_diffusers_hook"}
    assert not t._diffusers_hook.hooks
    assert torch.equal(generate(pipe, "wan"), ref)
    # remove_mixcache(target) does the same
    apply_mixcache(pipe, TINY_BALANCED)
    remove_mixcache(pipe)
    assert torch.equal(generate(pipe, "wan"), ref)


def test_tiny_configs_order_compute_and_error_on_wan_cfg(tiny_wan_pipe):
    ref = generate(tiny_wan_pipe, "wan", steps=20)
    fractions, errors = [], []
    for config in (TINY_QUALITY, TINY_BALANCED, TINY_FAST):
        with Applied(tiny_wan_pipe, config) as h:
            out = generate(tiny_wan_pipe, "wan", steps=20)
        fractions.append(h.stats().compute_fraction)
        errors.append(rel_err(out, ref))
    assert fractions[0] > fractions[1] > fractions[2]
    assert 0 < errors[0] < errors[1] < errors[2] < 0.1


def test_fast_mixes_granularities_on_wan_cfg(tiny_wan_pipe):
    with Applied(tiny_wan_pipe, TINY_FAST) as h:
        generate(tiny_wan_pipe, "wan")
    used = {a for a, n in h.stats().action_counts.items() if n and a != "compute"}
    assert len(used) >= 2


@pytest.mark.parametrize("granularity", ["step", "cfg", "block"])
def test_single_granularity_configs_use_their_action(tiny_wan_pipe, granularity):
    ref = generate(tiny_wan_pipe, "wan")
    config = TINY_FAST.replace(granularities=(granularity,))
    with Applied(tiny_wan_pipe, config) as h:
        out = generate(tiny_wan_pipe, "wan")
    counts = h.stats().action_counts
    assert counts[granularity] > 0
    assert all(counts[g] == 0 for g in ("step", "cfg", "block") if g != granularity)
    assert 0 < rel_err(out, ref) < 0.1


def test_repeated_generations_identical_and_equal_fresh(tiny_wan_pipe):
    with Applied(tiny_wan_pipe, TINY_FAST) as h:
        outs = [generate(tiny_wan_pipe, "wan") for _ in range(3)]
        stats = [h.stats().to_dict() for _ in range(1)]
    with Applied(tiny_wan_pipe, TINY_FAST) as h2:
        fresh = generate(tiny_wan_pipe, "wan")
    assert all(torch.equal(o, fresh) for o in outs)
    assert stats[0] == h2.stats().to_dict()


@pytest.mark.parametrize(("family", "kw"), [("wan", {}), ("hunyuan", TRUE_CFG)])
def test_exception_mid_generation_does_not_poison_next(request, family, kw):
    pipe = request.getfixturevalue(f"tiny_{family}_pipe")
    with Applied(pipe, TINY_FAST):
        clean = generate(pipe, family, **kw)

    def boom(pipe_, step, timestep, callback_kwargs):
        if step == 5:
            raise RuntimeError("interrupted")
        return callback_kwargs

    with Applied(pipe, TINY_FAST) as h:
        with pytest.raises(RuntimeError, match="interrupted"):
            generate(pipe, family, callback_on_step_end=boom, **kw)
        again = generate(pipe, family, **kw)
        assert h.stats().complete
    assert torch.equal(again, clean)


def test_exception_inside_a_forward_frees_every_entry(tiny_wan_pipe):
    """An error raised inside the transformer's forward (out of memory, an interrupt) at step 8:
    nothing MixCache held stays alive, and the next call equals a fresh controller's."""
    pipe = tiny_wan_pipe
    with Applied(pipe, TINY_FAST) as h:
        clean = generate(pipe, "wan")
        clean_stats = h.stats().to_dict()
    calls = []

    def oom(*args, **kwargs):  # proj_out runs in every forward, reused or not
        calls.append(1)
        raise torch.OutOfMemoryError("out of memory (simulated)")

    with Applied(pipe, TINY_FAST) as h:
        ctrl = h.controllers["transformer"]
        held = []

        def at_step(pipe_, step, timestep, callback_kwargs):
            held.append(ctrl._held_bytes())
            if step == 7:
                pipe.transformer.proj_out.forward = oom  # the next forward (step 8) raises
            return callback_kwargs

        try:
            with pytest.raises(torch.OutOfMemoryError):
                generate(pipe, "wan", callback_on_step_end=at_step)
        finally:
            del pipe.transformer.proj_out.forward
        assert calls and held[-1] > 0  # entries were held when step 8 started
        assert ctrl._held_bytes() == 0 and len(ctrl._pending) == 0
        assert not h.stats().complete and {r.step for r in h.stats().records} == set(range(8))
        again = generate(pipe, "wan")
        assert h.stats().to_dict() == clean_stats
    assert torch.equal(again, clean)


@pytest.mark.parametrize("cfg_mode", ["residual_diff", "output"])
def test_a_run_without_cfg_holds_no_cfg_reference(tiny_wan_pipe, cfg_mode):
    """guidance_scale=1 (one branch per step, as a guidance-distilled model): with cfg enabled
    MixCache holds exactly what it holds with cfg disabled from the second step on (the first
    step cannot know yet that no uncond pass follows), and decides the same."""
    config = TINY_FAST.replace(cfg_mode=cfg_mode)

    def run(cfg, guidance):
        with Applied(tiny_wan_pipe, cfg) as h:
            ctrl, held = h.controllers["transformer"], []

            def at_step(pipe_, step, timestep, callback_kwargs):
                held.append((ctrl._held_bytes(), len(ctrl.cfg.tensors()) + len(ctrl.cfg.entries())))
                return callback_kwargs

            out = generate(
                tiny_wan_pipe, "wan", guidance_scale=guidance, callback_on_step_end=at_step
            )
            return out, held, h.stats()

    out, held, stats = run(config, 1.0)
    no_cfg, held_no_cfg, _ = run(config.replace(granularities=("step", "block")), 1.0)
    assert stats.compute_fraction < 1 and torch.equal(out, no_cfg)
    assert held[1:] == held_no_cfg[1:] and all(n == 0 for _, n in held[1:])
    # With CFG the reference is held: what the comparison above would see if it were kept.
    _, held_cfg, _ = run(config, 5.0)
    assert any(n > 0 for _, n in held_cfg[1:])


def test_batch_of_two_gets_one_decision_per_forward(tiny_wan_pipe):
    prompts = [PROMPT, "a blue square moving left"]
    ref = generate(tiny_wan_pipe, "wan", prompt=prompts)
    with Applied(tiny_wan_pipe, TINY_FAST) as h:
        out = generate(tiny_wan_pipe, "wan", prompt=prompts)
    stats = h.stats()
    assert out.shape[0] == 2 and len(stats.records) == 2 * 12  # one record per forward
    assert stats.compute_fraction < 1
    assert rel_err(out[0], ref[0]) < 0.1 and rel_err(out[1], ref[1]) < 0.1
    with Applied(tiny_wan_pipe, NO_REUSE):
        assert torch.equal(generate(tiny_wan_pipe, "wan", prompt=prompts), ref)


def test_wan_without_cfg_runs_one_branch_and_says_cfg_is_na(tiny_wan_pipe):
    with Applied(tiny_wan_pipe, TINY_FAST) as h:
        generate(tiny_wan_pipe, "wan", guidance_scale=1.0)
    stats = h.stats()
    assert {r.branch for r in stats.records} == {"cond"}
    assert stats.action_counts["cfg"] == 0 and stats.compute_fraction < 1
    assert "guidance_scale <= 1" in stats.unavailable["cfg"]


def test_hunyuan_distilled_single_pass(tiny_hunyuan_pipe):
    ref = generate(tiny_hunyuan_pipe, "hunyuan")
    with Applied(tiny_hunyuan_pipe, TINY_FAST) as h:
        out = generate(tiny_hunyuan_pipe, "hunyuan")
    stats = h.stats()
    assert {r.branch for r in stats.records} == {"cond"}
    assert stats.records[-1].blocks_total == 6  # 2 dual + 4 single-stream blocks, one stack
    # No step kwargs in HunyuanVideo's cache context: steps come from the timestep, the number
    # of steps from the pipeline's scheduler, so the final-steps boundary still applies.
    assert [r.step for r in stats.records] == list(range(12))
    assert stats.records[-1].reason.startswith("final steps") and stats.complete
    assert stats.compute_fraction < 1 and "cfg" in stats.unavailable
    assert 0 < rel_err(out, ref) < 0.1


def test_hunyuan_true_cfg_uses_cfg_reuse(tiny_hunyuan_pipe):
    ref = generate(tiny_hunyuan_pipe, "hunyuan", **TRUE_CFG)
    with Applied(tiny_hunyuan_pipe, TINY_FAST.replace(granularities=("cfg",))) as h:
        out = generate(tiny_hunyuan_pipe, "hunyuan", **TRUE_CFG)
    stats = h.stats()
    assert {r.branch for r in stats.records} == {"cond", "uncond"}
    assert stats.action_counts["cfg"] > 0 and not stats.unavailable
    assert 0 < rel_err(out, ref) < 0.1


def test_hunyuan_block_span_crosses_the_two_block_lists(tiny_hunyuan_pipe):
    # 2 dual + 4 single blocks, head 1, tail 1, span 0.7*6 -> 4 blocks [1, 5): crosses lists.
    config = TINY_FAST.replace(granularities=("block",))
    with Applied(tiny_hunyuan_pipe, config) as h:
        generate(tiny_hunyuan_pipe, "hunyuan", **TRUE_CFG)
        span = h.controllers["transformer"].block.span
    assert span == (1, 5)
    assert {r.blocks_computed for r in h.stats().records if r.action == "block"} == {2}


@pytest.mark.parametrize(
    "override",
    [{"step_probe": "none"}, {"cfg_mode": "output"}, {"block_span": "lowest_change"}],
)
def test_options_run_and_stay_close(tiny_wan_pipe, override):
    ref = generate(tiny_wan_pipe, "wan")
    with Applied(tiny_wan_pipe, TINY_FAST.replace(**override)) as h:
        out = generate(tiny_wan_pipe, "wan")
    assert h.stats().compute_fraction < 1
    assert 0 < rel_err(out, ref) < 0.1


def test_memory_is_counted_small_and_lower_precision_halves_it(tiny_wan_pipe):
    with Applied(tiny_wan_pipe, TINY_FAST) as h:
        generate(tiny_wan_pipe, "wan")
    full_bytes = h.stats().cache_bytes
    with Applied(tiny_wan_pipe, TINY_FAST.replace(cache_dtype="bfloat16")) as h:
        generate(tiny_wan_pipe, "wan")
    half_bytes = h.stats().cache_bytes
    # One hidden state: 3 latent frames x (4 x 4) / patch (1, 2, 2) = 12 tokens x 32 dims, fp32.
    hidden = 12 * 32 * 4
    # Per branch: step and span residuals; plus the probe, the cond residual of the step and ΔR:
    # at most 4 hidden-state tensors per branch, independent of the number of blocks.
    assert 0 < full_bytes <= 4 * 2 * hidden
    assert half_bytes < 0.7 * full_bytes


def test_stats_are_json_and_summary_is_readable(tiny_wan_pipe):
    with Applied(tiny_wan_pipe, TINY_BALANCED) as h:
        generate(tiny_wan_pipe, "wan")
    stats = h.stats()
    data = json.loads(json.dumps(stats.to_dict()))
    assert data["compute_fraction"] == stats.compute_fraction
    rec = stats.records[0]
    assert (rec.step, rec.branch, rec.action) == (0, "cond", "compute")
    assert rec.blocks_total == 6 and rec.blocks_computed == 6 and rec.reason.startswith("warm-up")
    table, text = stats.table(), stats.summary()
    assert "cond" in table and "uncond" in table and table in stats.summary(per_step=True)
    assert f"block compute x{stats.block_speedup:.2f}" in text and "wall clock not measured" in text
    assert "caching started: trigger:" in text and "peak cache memory" in text
    assert "uncond" not in text.split("\n")[0]  # the short summary has no per-step table


def test_step_without_probe_runs_no_block(tiny_wan_pipe):
    config = TINY_FAST.replace(granularities=("step",), step_probe="none")
    with Applied(tiny_wan_pipe, config) as h:
        generate(tiny_wan_pipe, "wan", steps=16)
    steps = [r for r in h.stats().records if r.action == "step"]
    assert steps and all(r.blocks_computed == 0 for r in steps)


def test_cfg_output_mode_skips_the_uncond_forward(tiny_wan_pipe):
    config = TINY_FAST.replace(granularities=("cfg",), cfg_mode="output")
    with Applied(tiny_wan_pipe, config) as h:
        generate(tiny_wan_pipe, "wan")
    cfg = [r for r in h.stats().records if r.action == "cfg"]
    assert cfg and all(r.branch == "uncond" and r.blocks_computed == 0 for r in cfg)


def test_wan22_two_transformers_with_boundary(tiny_wan_pipe):
    import copy

    from diffusers import WanPipeline

    base = tiny_wan_pipe
    pipe = WanPipeline(
        tokenizer=base.tokenizer,
        text_encoder=base.text_encoder,
        vae=base.vae,
        scheduler=base.scheduler,
        transformer=copy.deepcopy(base.transformer),
        transformer_2=copy.deepcopy(base.transformer),
        boundary_ratio=0.5,
    )
    pipe.set_progress_bar_config(disable=True)
    ref = generate(pipe, "wan", steps=16)
    with Applied(pipe, TINY_FAST) as h:
        out = generate(pipe, "wan", steps=16)
    stats = h.stats()
    by_model = {m: sorted({r.step for r in stats.records if r.model == m}) for m in h.controllers}
    assert by_model["transformer"] and by_model["transformer_2"]
    assert max(by_model["transformer"]) < min(by_model["transformer_2"])  # high then low noise
    assert stats.compute_fraction < 1 and 0 < rel_err(out, ref) < 0.1
    assert "(transformer_2)" in stats.table() and stats.complete
    with Applied(pipe, NO_REUSE):
        assert torch.equal(generate(pipe, "wan", steps=16), ref)
