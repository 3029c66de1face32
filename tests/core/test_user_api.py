"""The library as users meet it: the speed vocabulary (block_speedup and its deprecated names),
configs that cannot act refused at apply time, summary(pipe), stats views, the bare-transformer
entry point, and the trigger's structured state."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
from toy import ToyTransformer, run_loop

import mixcache
from mixcache import (
    CacheStats,
    ConfigError,
    DecisionRecord,
    MixCacheConfig,
    NotAppliedError,
    UnsupportedModelError,
    apply_mixcache,
    apply_mixcache_to_transformer,
)
from mixcache.policy import decision as decision_mod
from mixcache.policy.decision import PolicyState, Situation, StepInputs, decide_step
from mixcache.policy.trigger import TriggerResult, TriggerState, check_trigger
from mixcache_lab.tiny import make_tiny_cogvideox_pipeline, tiny_call_kwargs


# ---------------------------------------------------------------- one speed vocabulary
def test_target_speedup_is_the_deprecated_name_of_block_speedup():
    with pytest.warns(DeprecationWarning, match="use 'block_speedup'") as caught:
        old = MixCacheConfig(target_speedup=2.0)
    assert caught[0].filename == __file__  # points at the caller's line
    assert old == MixCacheConfig(block_speedup=2.0) and old.target_speedup == 2.0
    with pytest.warns(DeprecationWarning, match="block_speedup"):
        assert MixCacheConfig().replace(target_speedup=3.0).block_speedup == 3.0
    with pytest.warns(DeprecationWarning, match="block_speedup"):
        assert MixCacheConfig.preset("fast", target_speedup=1.5).block_speedup == 1.5
    with pytest.warns(DeprecationWarning, match="block_speedup"):
        assert MixCacheConfig.from_dict({"target_speedup": 1.2}).block_speedup == 1.2
    with pytest.raises(ConfigError, match="both given"):
        MixCacheConfig(target_speedup=2.0, block_speedup=2.0)
    with pytest.raises(AttributeError):
        MixCacheConfig().target_speedup = 2.0  # the alias is read-only
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the new name, and reading the alias, are silent
        assert MixCacheConfig(block_speedup=2.0).target_speedup == 2.0


def test_apply_speedup_kwarg_is_deprecated_for_block_speedup():
    m = ToyTransformer()
    with pytest.warns(DeprecationWarning, match="block_speedup"):
        handle = apply_mixcache(m, "paper", speedup=2.0)
    assert handle.config.block_speedup == 2.0
    handle.remove()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = apply_mixcache(m, "paper", block_speedup=1.5)
    assert handle.config.block_speedup == 1.5 and handle.config.step_probe == "first_block"
    handle.remove()
    with pytest.raises(ConfigError, match="both given"):
        apply_mixcache(m, speedup=2.0, block_speedup=2.0)
    assert not m.is_cache_enabled


def _stats(computed: list[int], planned: float | None) -> CacheStats:
    """One forward per step on a 4-block model, ``computed[i]`` blocks run at step i."""
    recs = [DecisionRecord(i, "cond", "step" if c < 4 else "compute", c, 4, "") for i, c in
            enumerate(computed)]  # fmt: skip
    return CacheStats.build(recs, planned_block_speedup=planned, preset="balanced")


def test_headline_labels_block_compute_and_wall_clock_and_the_budget():
    stats = _stats([4, 0, 4, 0], planned=2.0)  # 8 of 16 blocks: x2.00 of block compute
    assert stats.block_speedup == 2.0 and stats.target_speedup == 2.0 and stats.budget_met
    assert stats.headline() == (
        "MixCache balanced: block compute x2.00 (budget x2 met); wall clock not measured; "
        "reuses step=2, cfg=0, block=0 of 4 forwards"
    )
    timed = stats.with_wall_clock(3.0, 2.0)
    assert timed.wall_clock_speedup == 1.5
    assert "block compute x2.00 (budget x2 met); wall clock x1.50 (measured)" in str(timed)
    missed = _stats([4, 0, 4, 0], planned=3.0)  # 0.5 of the blocks vs 1/3 asked: > 5 % off
    assert missed.budget_met is False and "(budget x3 missed)" in missed.headline()
    assert any("block-compute budget x3 missed" in w for w in missed.warnings)
    with pytest.raises(ValueError, match="cached_seconds=0"):
        stats.with_wall_clock(1.0, 0)


def test_records_are_a_tuple_and_a_list_of_dicts_when_called():
    stats = _stats([4, 0], planned=None)
    assert stats.records[1].action == "step" and len(stats.records) == 2
    assert stats.records() == [r.to_dict() for r in stats.records]
    assert stats.records()[0]["blocks_computed"] == 4
    header = stats.table().splitlines()[0]
    assert header.split() == ["step", "cond", "blocks", "reason"]
    assert header not in stats.summary()  # the short summary has no per-step table
    assert stats.table() in stats.summary(per_step=True)


# ---------------------------------------------------------------- entry points
def test_summary_of_a_pipeline_is_one_line_of_its_last_generation():
    pipe = make_tiny_cogvideox_pipeline()
    with pytest.raises(NotAppliedError, match="apply_mixcache"):
        mixcache.summary(pipe)
    handle = apply_mixcache(pipe, block_speedup=2.0)
    pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0),
         **tiny_call_kwargs("cogvideox", num_inference_steps=10))  # fmt: skip
    line = mixcache.summary(pipe)
    assert "\n" not in line and line == handle.stats().headline()
    assert line.startswith("MixCache balanced: block compute x") and "(budget x2 " in line
    assert mixcache.summary(pipe.transformer) == line
    assert "wall clock x2.00 (measured)" in mixcache.summary(pipe, wall_clock=(4.0, 2.0))
    assert handle.stats().table() in mixcache.summary(pipe, per_step=True)
    handle.remove()
    assert mixcache.summary(pipe) == line  # still the last generation after removal


def test_apply_to_a_bare_transformer():
    m, ref = ToyTransformer(), run_loop(ToyTransformer())
    handle = apply_mixcache_to_transformer(m, MixCacheConfig.preset("paper"))
    assert handle.active and set(handle._controllers) == {"transformer"}
    assert handle.controllers == handle._controllers  # the internal alias keeps working
    handle.remove()
    out = run_loop(m)
    assert all(torch.equal(out[k], ref[k]) for k in ref)
    with pytest.raises(UnsupportedModelError, match=r"apply_mixcache\(pipe, config\)"):
        apply_mixcache_to_transformer(make_tiny_cogvideox_pipeline())


# ---------------------------------------------------------------- configs that cannot act
def test_a_config_none_of_whose_granularities_can_act_is_refused():
    # CogVideoX batches cond and uncond into one forward; with the first-block probe the step
    # is decided after block 0 ran on the whole batch, too late to run the cond half alone.
    pipe = make_tiny_cogvideox_pipeline()
    config = MixCacheConfig(granularities=("cfg",), step_probe="first_block")
    with pytest.raises(ConfigError, match="step_probe='none' \\(the default\\) lets cfg act"):
        apply_mixcache(pipe, config)
    assert not pipe.transformer.is_cache_enabled  # nothing installed
    assert not hasattr(pipe.transformer, "_diffusers_hook") or not any(
        n.startswith("mixcache") for n in pipe.transformer._diffusers_hook.hooks
    )
    # The default probe decides before the forward: the same cfg-only config acts.
    apply_mixcache(pipe, config.replace(step_probe="none")).remove()


def test_a_granularity_that_cannot_act_is_logged_and_the_others_act(caplog):
    pipe = make_tiny_cogvideox_pipeline()
    config = MixCacheConfig(granularities=("step", "cfg"), step_probe="first_block")
    with caplog.at_level(logging.WARNING, logger="mixcache"):
        handle = apply_mixcache(pipe, config)
    handle.remove()
    logged = [r.getMessage() for r in caplog.records if "cannot act" in r.getMessage()]
    assert len(logged) == 1 and logged[0].startswith("mixcache: cfg cannot act on transformer")
    assert logged[0].endswith("; step act")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mixcache"):
        apply_mixcache(pipe, config.replace(step_probe="none")).remove()
    assert not [r for r in caplog.records if "cannot act" in r.getMessage()]


# ---------------------------------------------------------------- structured trigger state
def test_trigger_states_are_structured():
    cfg = MixCacheConfig.preset("paper", min_warmup_steps=2, final_steps=1)
    states = [check_trigger(s, 10, c, False, cfg).state for s, c in
              [(0, None), (9, 0.0), (3, None), (3, 0.5), (3, 0.0)]]  # fmt: skip
    assert states == [TriggerState.WARMUP, TriggerState.FINAL, TriggerState.WAITING,
                      TriggerState.WAITING, TriggerState.FIRED]  # fmt: skip
    assert check_trigger(3, 10, 0.5, True, cfg).state is TriggerState.ENABLED
    assert check_trigger(3, 10, 0.0, False, cfg).fired


def test_budget_mode_reads_the_trigger_state_not_its_text(monkeypatch):
    # A waiting trigger whose reason is worded differently still hands over to the budget
    # trigger (which fires right after the warm-up with trigger_ratio=None).
    cfg = MixCacheConfig(block_speedup=2.0, min_warmup_steps=2)
    reworded = TriggerResult(False, "not yet", TriggerState.WAITING)
    monkeypatch.setattr(decision_mod, "check_trigger", lambda *a, **k: reworded)
    situation = Situation(step=3, entry_step={"step": 2}, signal={"step": 0.01})
    budget = decision_mod.Budget(step=3, num_steps=20, block_speedup=2.0, spent=3.0)
    inputs = StepInputs(3, 20, 0.01, situation, {"step": 1.0, "cfg": 1.0, "block": 1.0},
                        {"step": 1.0, "cfg": 0.5, "block": 0.5}, 1.0, budget)  # fmt: skip
    decision, state = decide_step(inputs, PolicyState.initial(cfg), cfg)
    assert state.triggered and state.trigger_reason == "trigger: after warm-up at step 3"
    assert decision.action == "step"
