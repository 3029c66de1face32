"""The controller: the one place that connects hooks, policy and granularities.

One controller per hooked transformer. It owns the state of the current generation
(:class:`_Run`), learns branch and step from diffusers' cache context (or the timestep), makes
one decision per step at the step's first branch via :mod:`mixcache.policy`, executes it in the
block hooks (skip a span of blocks, add a stored residual), refreshes cache entries at full
computes, and records one :class:`~mixcache.stats.DecisionRecord` per forward.

Hot-path rules (docs/design.md, "Performance"): all signals are queued as tensor sums and reduced
once per forward at the decision point (:class:`~mixcache.policy.signals.PendingSignals`); no
per-block host synchronisation; residuals are computed once and stored once.
"""

from __future__ import annotations

import inspect
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from .config import MixCacheConfig
from .granularity import (
    Entry,
    cfg_residual,
    choose_span,
    cond_half_inputs,
    middle_span,
    rebuild_batch,
    split_halves,
    step_span,
    to_cache,
)
from .models import ModelSpec
from .parallel import global_max, shard_position, sketch_of
from .policy.budget import Budget
from .policy.decision import (
    PolicyState,
    Situation,
    StepDecision,
    StepInputs,
    adapt_interval,
    blocked_reasons,
    decide_step,
    follow_decision,
)
from .policy.signals import PendingSignals, rel_l1_sums
from .profiles import GRANULARITIES, ImpactProfile
from .stats import CacheStats, DecisionRecord

logger = logging.getLogger("mixcache")

__all__ = ["Controller", "Perturbation"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_DEFAULT_BRANCH = "default"
_BATCHED_CFG_BRANCH = "cond_uncond"  # diffusers' cache_context name for a batched-CFG forward


class Perturbation:
    """Calibration hook: adds noise to what a granularity reuses (see :mod:`mixcache.calibration`).

    ``apply(kind, step, branch, tensor, scale_of)`` returns the tensor to use instead; ``kind`` is
    ``"step"`` (stack output), ``"cfg"`` (non-reference stack output, scaled by ΔR) or
    ``"block"`` (span output).
    """

    def apply(
        self, kind: str, step: int, branch: str, tensor: torch.Tensor, scale_of: torch.Tensor
    ) -> torch.Tensor:  # pragma: no cover - interface
        return tensor


@dataclass
class _BranchCache:
    step: Entry | None = None  # R_b for step reuse
    step_prev: Entry | None = None  # the R_b before it (residual_order=1 extrapolates from both)
    span: Entry | None = None  # R_span for block reuse
    delta: Entry | None = None  # ΔR = R_ref − R_b (non-reference branches) for cfg reuse
    delta_out: Entry | None = None  # Δout for cfg_mode="output"

    def entries(self) -> tuple[Entry | None, ...]:
        return (self.step, self.step_prev, self.span, self.delta, self.delta_out)


@dataclass
class _Run:
    """Everything that lives for one generation; replaced wholesale at its end."""

    policy: PolicyState
    step: int = -1
    timestep: float | None = None
    num_steps: int | None = None
    branches: list[str] = field(default_factory=list)
    step_branches: set[str] = field(default_factory=set)
    reference: str | None = None
    reference_fresh: bool = False
    decision: StepDecision | None = None
    caches: dict[str, _BranchCache] = field(default_factory=dict)
    reference_now: torch.Tensor | None = None  # R_full (or output) of the reference, this step
    # Batched CFG (one "cond_uncond" forward of [uncond, cond] per step): the two halves are
    # two virtual branches of the one forward; its cache's ``delta`` is out[cond] - out[uncond].
    batched: bool = False
    probe_prev: torch.Tensor | None = None
    probe_change: float | None = None
    probe_hist: dict[int, float] = field(default_factory=dict)  # step -> probe change
    prev_input: torch.Tensor | None = None
    prev_output: torch.Tensor | None = None
    prev_output_step: int | None = None
    output_change: float | None = None
    input_change: float | None = None
    input_hist: dict[int, float] = field(default_factory=dict)  # step -> input change
    ratio_k: float | None = None
    last_full_step: int | None = None
    rates: dict[str, float] = field(default_factory=dict)
    span: tuple[int, int] = (0, 0)
    next_span: tuple[int, int] | None = None
    sketches: dict[int, torch.Tensor] = field(default_factory=dict)
    block_change: list[float | None] = field(default_factory=list)
    adapt_for: str | None = None
    records: list[DecisionRecord] = field(default_factory=list)
    peak_bytes: int = 0
    window: tuple[int, int] | None = None  # steps this transformer runs (None: all)
    nonfinite: int = 0  # cache entries dropped for holding NaN/inf
    over_budget: int = 0  # cache entries not kept because of max_cache_bytes


class Controller:
    """Per-transformer MixCache state machine (see module docstring)."""

    def __init__(
        self,
        module: torch.nn.Module,
        spec: ModelSpec,
        config: MixCacheConfig,
        impact: ImpactProfile,
        name: str = "transformer",
        num_steps_hint: Callable[[], int | None] | None = None,
        signals: PendingSignals | None = None,
        step_hint: Callable[[], int | None] | None = None,
    ) -> None:
        self.spec = spec
        self.config = config
        self.impact = {g: impact.impact(g) for g in GRANULARITIES}
        self.profile = impact
        self.name = name
        self.num_blocks = len(spec.blocks(module))
        self._num_steps_hint = num_steps_hint
        self._step_hint = step_hint
        # Steps [start, stop) this transformer runs (Wan2.2's experts), read once per generation.
        self.window_hint: Callable[[], tuple[int, int] | None] | None = None
        # The pipeline's do_classifier_free_guidance (None: unknown, e.g. a bare transformer).
        self.cfg_hint: Callable[[], bool | None] | None = None
        # The other controllers of the same pipeline (Wan2.2: the other expert). When this one
        # starts its part of a generation, theirs is over: their entries are freed then.
        self.siblings: list[Controller] = []
        # Blocks run per step (all branches) in the current generation; shared with the
        # siblings, so the budget of a two-expert pipeline is planned over the whole run.
        self.ledger: dict[int, int] = {}
        self._cache_dtype = _DTYPES.get(config.cache_dtype) if config.cache_dtype else None
        self._enabled = frozenset(config.granularities)
        self._block_na: str | None = None
        if "block" in self._enabled and config.head_blocks + config.tail_blocks >= self.num_blocks:
            # Too few blocks for a span between head and tail: block reuse cannot act here.
            self._enabled = self._enabled - {"block"}
            self._block_na = (
                f"{self.num_blocks} blocks leave no span between head_blocks="
                f"{config.head_blocks} and tail_blocks={config.tail_blocks}"
            )
        self._probe = config.step_probe == "first_block"
        # Batched-CFG pipelines: the cfg granularity runs the cond half of the batch only. It
        # must know the step's decision before the forward starts, so not with a block probe
        # (its decision comes after block 0 has run on the whole batch).
        self._layout = spec.batch_layout if "cfg" in self._enabled and not self._probe else None
        # Positional parameter names of the forward (to find the batch arguments in ``args``).
        self._forward_params = tuple(inspect.signature(module.forward).parameters)
        self._step_span = step_span(self.num_blocks, config.step_probe)
        self._middle = middle_span(
            self.num_blocks, config.head_blocks, config.tail_blocks, config.span_fraction
        )
        self.perturb: Perturbation | None = None
        # Calibration (method="reuse"): step -> granularity to reuse there, bypassing the policy;
        # the D^ψ seen at that decision is kept in forced_signal.
        self.force: Callable[[int], str | None] | None = None
        self.forced_signal: float | None = None
        self.last_stats: CacheStats | None = None
        # ``signals``: the queue the caller built (parallel.ParallelSignals finds the group of a
        # sequence-parallel model); by default, reduced over config.process_group only.
        self._pending = signals if signals is not None else PendingSignals(config.process_group)
        self.run = self._new_run()
        self._reset_forward()

    # ------------------------------------------------------------------ generation lifecycle
    def _new_run(self) -> _Run:
        run = _Run(policy=PolicyState.initial(self.config), span=self._middle)
        run.block_change = [None] * self.num_blocks
        return run

    def end_generation(self) -> None:
        """Finalise the current generation's stats and drop every cache (diffusers' reset)."""
        self._pending.clear()
        if self.run.records:
            self.last_stats = self._build_stats(self.run)
            for text in self.last_stats.warnings:
                logger.warning("mixcache[%s]: %s", self.name, text)
        self.run = self._new_run()
        self._reset_forward()

    def current_stats(self) -> CacheStats:
        """Stats of the generation in progress (may be empty)."""
        return self._build_stats(self.run)

    def _build_stats(self, run: _Run) -> CacheStats:
        complete = run.num_steps is None or run.step >= run.num_steps - 1
        return CacheStats.build(
            run.records,
            cache_bytes=run.peak_bytes,
            trigger=run.policy.trigger_reason,
            unavailable=self._unavailable(run),
            complete=complete,
            config_tag=self.config.tag(),
            # With siblings (Wan2.2's experts) each runs part of the steps by design.
            planned_steps=None if self.siblings else run.num_steps,
            dry_run=self.config.dry_run,
            target_speedup=self.config.target_speedup,
            nonfinite_dropped=run.nonfinite,
            over_byte_budget=run.over_budget,
        )

    def _unavailable(self, run: _Run) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._block_na is not None:
            out["block"] = self._block_na
        if "cfg" in self._enabled and len(run.branches) < 2:
            # diffusers names the one forward of batched-CFG pipelines "cond_uncond", with or
            # without guidance; the pipeline says which (do_classifier_free_guidance).
            cfg_on = self.cfg_hint() if self.cfg_hint is not None else None
            if run.batched:
                pass  # batched CFG: the two halves of the batch are the branches
            elif run.branches == [_BATCHED_CFG_BRANCH] and cfg_on is not False:
                # Not "no CFG": cond and uncond are there, as the two halves of one batch.
                if self.spec.batch_layout is None:
                    why = "this model's batch layout is not known"
                elif self._probe:
                    why = (
                        "with step_probe='first_block' the step is decided after block 0 has "
                        "run on the whole batch, too late to run its cond half alone "
                        "(step_probe='none', as in the presets, decides first)"
                    )
                elif cfg_on is None:
                    why = (
                        "the caller does not say whether it runs CFG (apply MixCache to the "
                        "pipeline, not to its transformer)"
                    )
                else:
                    why = "its batch does not split into two halves"
                out["cfg"] = (
                    "cond and uncond run as one batched forward per step (batched CFG) and "
                    f"{why}; step and block reuse act on the whole batch"
                )
            else:
                out["cfg"] = (
                    f"only one branch ({', '.join(run.branches) or 'none'}) per step: no CFG "
                    "pass to reuse (guidance-distilled model or guidance_scale <= 1)"
                )
        return out

    # ------------------------------------------------------------------ per-forward state
    def _reset_forward(self) -> None:
        self.fw_branch = _DEFAULT_BRANCH
        self.fw_action = "compute"
        self.fw_reason = ""
        self.fw_is_ref = False
        self.fw_decide_at_probe = False
        self.fw_skip: tuple[int, int] = (self.num_blocks, self.num_blocks)
        self.fw_residual: Entry | torch.Tensor | None = None
        self.fw_capture = False
        self.fw_writes = True  # this full compute writes step/block entries
        self.fw_half = False  # batched cfg: this forward runs the cond half of the batch only
        self.fw_h0: torch.Tensor | None = None
        self.fw_h1: torch.Tensor | None = None
        self.fw_span_in: tuple[torch.Tensor, torch.Tensor | None] | None = None
        self.fw_computed = 0
        self.fw_scores: dict[str, float] = {}

    @torch.compiler.disable
    def begin_forward(self, context: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Start a transformer forward. Returns an output to use instead of running it, or None."""
        self._reset_forward()
        branch = getattr(context, "name", None) or _DEFAULT_BRANCH
        first = self.run.step < 0
        branch = self._advance(branch, context, args, kwargs)  # may end the previous generation
        self.fw_branch = branch
        run = self.run
        if self._layout is not None and run.step_branches == {branch}:
            run.batched = self._is_batched_cfg(branch, args, kwargs)
        if first or not run.records:
            for other in self.siblings:
                if other.run.records:
                    # Wan2.2: the other expert's phase of this generation has ended.
                    other.end_generation()
        if run.reference is None or run.decision is None:
            # First branch of the step (or the reference failed before deciding): it decides.
            return self.begin_forward_as_reference(branch, args, kwargs)
        action, reason = follow_decision(run.decision.action, self._situation(branch, False))
        if self.config.dry_run and action != "compute":
            action, reason = "compute", f"dry run (would: {action})"
        self.fw_action, self.fw_reason = action, reason
        return self._plan(action)

    def begin_forward_as_reference(
        self, branch: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """First branch of the step: it is the reference and takes the step's decision."""
        run = self.run
        run.reference = branch
        self.fw_is_ref = True
        self._prepare_probe_none(args, kwargs)
        if self._probe and self.num_blocks > 1:
            self.fw_decide_at_probe = True  # decided after block 0 (its residual is D_step)
            self.fw_skip = (self.num_blocks, self.num_blocks)
            self.fw_capture = True
            return None
        self._decide()
        return self._plan(self.fw_action)

    def _advance(
        self, branch: str, context: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """Detect a new step or a new generation (docs/method.md, "Run boundaries").

        Returns the branch name to use. Outside any cache context (``context is None``) every
        call is branch ``"default"``, except that further calls at the same timestep get their own
        cache slot (``"default#2"``, ...): pipelines that run CFG without cache contexts
        (``WanVideoToVideoPipeline``, HunyuanVideo image-to-video) would otherwise mix the
        residuals of their two passes. Nothing is inferred from the order (no cond/uncond
        semantics); the first call of a step is the reference, like any first branch.
        """
        run = self.run
        step_index = getattr(context, "step_index", None)
        if step_index is None and self._step_hint is not None:
            # The scheduler's own step counter: no host sync on the timestep tensor.
            step_index = self._step_hint()
        if step_index is not None:
            repeat = step_index == run.step and branch in run.step_branches
            if repeat and context is None:
                # Context-less CFG passes at one step: separate cache slots (see below).
                n = 2
                while f"{branch}#{n}" in run.step_branches:
                    n += 1
                branch, repeat = f"{branch}#{n}", False
            new_gen = run.step >= 0 and (step_index < run.step or repeat)
            new_step = step_index != run.step
        else:
            t = self._timestep(args, kwargs)
            new_gen = False
            new_step = run.timestep is None or t != run.timestep
            if run.timestep is not None and t is not None and t > run.timestep:
                new_gen = True
            elif not new_step and branch in run.step_branches:
                if context is None:
                    n = 2
                    while f"{branch}#{n}" in run.step_branches:
                        n += 1
                    branch = f"{branch}#{n}"
                else:
                    # Same timestep, same named branch again: a new generation if still at the
                    # first step (restart after an interruption), else a repeated timestep.
                    new_gen = run.step == 0
                    new_step = True
            step_index = run.step + 1 if new_step else run.step
            if new_gen:
                step_index = 0
            run.timestep = t
        if new_gen:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("mixcache[%s]: new generation detected", self.name)
            timestep = run.timestep
            self.end_generation()
            run = self.run
            run.timestep = timestep
            new_step = True
        if run.step < 0 or new_gen:
            # The pipeline's own count first: it is what the loop runs (strength included).
            run.num_steps = (self._num_steps_hint() if self._num_steps_hint else None) or getattr(
                context, "num_inference_steps", None
            )
            run.window = self.window_hint() if self.window_hint else None
            start = step_index if step_index is not None else 0
            for j in [j for j in self.ledger if j >= start]:
                del self.ledger[j]  # the previous generation's spending
        if new_step:
            run.step = step_index
            run.step_branches = set()
            run.reference = None
            run.reference_fresh = False
            run.decision = None
            run.reference_now = None
        run.step_branches.add(branch)
        if branch not in run.branches:
            run.branches.append(branch)
        run.caches.setdefault(branch, _BranchCache())
        return branch

    def _timestep(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> float | None:
        t = self.spec.timestep.get(args, kwargs)
        if isinstance(t, torch.Tensor):
            # One float per forward; Wan2.2 expand_timesteps passes (B, seq): the max is t. Context
            # parallel splits that (B, seq) timestep with the sequence: max over every shard.
            if not t.numel():
                return None
            top = t.max()
            if t.dim() > 1:
                top = global_max(top, self._pending.process_group)
            return float(top)
        return float(t) if t is not None else None

    # ------------------------------------------------------------------ the decision
    def _situation(self, branch: str, is_ref: bool) -> Situation:
        """Inputs of the joint-scheduling table for ``branch``.

        At the reference the decision is for every branch of the step, so each granularity is
        judged by the oldest entry among the branches it would use (joint scheduling: a cfg step
        refreshes the cond entries but not the uncond ones, and a later step or block reuse of the
        uncond branch must see that age).
        """
        run = self.run
        cache = run.caches[branch]
        if is_ref:
            caches = [run.caches[b] for b in run.branches]
            others = [run.caches[b] for b in run.branches if b != branch]
            entry_step = {
                "step": _oldest([c.step for c in caches]),
                "block": _oldest([c.span for c in caches]),
                "cfg": _oldest([self._cfg_entry(c) for c in others]),
            }
            span_ok = all(c.span is None or c.span.span == run.span for c in caches)
            if run.batched:  # the uncond half's difference, stored with the one branch
                entry_step["cfg"] = cache.delta.step if cache.delta else None
        else:
            delta = self._cfg_entry(cache)
            entry_step = {
                "step": cache.step.step if cache.step else None,
                "block": cache.span.step if cache.span else None,
                "cfg": delta.step if delta else None,
            }
            span_ok = cache.span is None or cache.span.span == run.span
        return Situation(
            step=run.step,
            enabled=tuple(g for g in GRANULARITIES if g in self._enabled),
            n_branches=self._n_branches(run),
            is_reference=is_ref,
            reference_fresh=run.reference_fresh,
            entry_step=entry_step,
            max_age=self.config.max_age,
            span_ok=span_ok,
            signal=self._signals(entry_step) if is_ref else {},
        )

    @staticmethod
    def _n_branches(run: _Run) -> int:
        """CFG passes per step: the cache contexts seen, or the two halves of a batched one."""
        return 2 if run.batched else len(run.branches)

    def _cfg_entry(self, cache: _BranchCache) -> Entry | None:
        return cache.delta_out if self.config.cfg_mode == "output" else cache.delta

    def _signals(self, entry_step: dict[str, int | None]) -> dict[str, float | None]:
        """D^ψ (docs/method.md, "Signals D"): step from the probe, cfg/block as drift rate × age."""
        run = self.run
        signal: dict[str, float | None] = {}
        made = entry_step.get("step")
        # Accumulated change since the oldest step entry was computed (TeaCache/FBCache style).
        if made is None or (self._probe and run.probe_change is None):
            signal["step"] = None
        elif self._probe:
            signal["step"] = sum(v for j, v in run.probe_hist.items() if j > made)
        elif run.ratio_k is not None:
            signal["step"] = run.ratio_k * sum(v for j, v in run.input_hist.items() if j > made)
        else:
            signal["step"] = None
        for g in ("cfg", "block"):
            made, rate = entry_step.get(g), run.rates.get(g)
            signal[g] = rate * (run.step - made) if made is not None and rate is not None else None
        return signal

    def _decide(self) -> None:
        """Reduce pending signals (one sync), then take the step's decision."""
        self._pending.flush()
        run = self.run
        situation = self._situation(self.fw_branch, True)
        probe_change = run.probe_change if self._probe else run.output_change
        inputs = StepInputs(
            run.step,
            run.num_steps,
            probe_change,
            situation,
            self.impact,
            self._savings(run),
            self._time_weight(run),
            self._budget(run),
        )
        streak = run.policy.reused_in_a_row
        forced = self.force(run.step) if self.force is not None else None
        if forced is not None:
            blocked = blocked_reasons(situation)
            if forced in blocked:
                decision = StepDecision("compute", f"forced {forced} impossible: {blocked[forced]}")
            else:
                self.forced_signal = situation.signal.get(forced)
                decision = StepDecision(forced, "forced (calibration)")
        else:
            decision, run.policy = decide_step(inputs, run.policy, self.config)
        run.decision = decision
        action, reason = decision.action, decision.reason
        if self.config.dry_run and action != "compute":
            action, reason = "compute", f"dry run (would: {action}; {reason})"
        if action == "cfg" and run.batched:
            # Batched CFG: the forward runs the cond half of the batch; the uncond half is
            # rebuilt from the stored difference (TransformerHook). A half batch writes no entry.
            action, self.fw_half, self.fw_writes = "compute", True, False
            reason = f"cfg: cond half of the batch only ({decision.reason})"
        elif action == "cfg":
            action = "compute"  # the reference computes; the other branches reuse from it
            reason = f"compute (reference for cfg; {decision.reason})"
            # Joint scheduling (entries_share_a_step): the reference does not refresh its step and
            # block entries here, the uncond branch cannot; entries of all branches stay from one
            # step, so their errors stay correlated and largely cancel in the CFG combination.
            self.fw_writes = False
        self.fw_action, self.fw_reason = action, reason
        self.fw_scores = dict(decision.scores)
        if decision.action == "compute" and run.next_span is not None:
            # lowest_change: move the span only at a full compute of every branch, which writes
            # the span residuals for the new span right away (no step without a valid entry).
            run.span, run.next_span = run.next_span, None
        # Adaptive interval (docs/method.md, "Step 3"): the full compute that ends a reuse streak
        # measures how far the last used cache had drifted; the measurement arrives with the next
        # flush.
        run.adapt_for = run.policy.last_cached if decision.action == "compute" and streak else None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "mixcache[%s] step %d: %s (%s)",
                self.name,
                run.step,
                decision.action,
                decision.reason,
            )

    def _budget(self, run: _Run) -> Budget | None:
        """Budget mode: compute spent on the previous steps, in units of one full step."""
        if self.config.target_speedup is None:
            return None
        # Blocks run (every branch) on the steps before this one, in units of one full step;
        # counted at decision time, when every branch of the run has been seen.
        per_step = self.num_blocks * max(1, self._n_branches(run))
        spent = sum(n for j, n in self.ledger.items() if j < run.step) / per_step
        reserved = 0
        if run.window is not None and run.num_steps is not None and run.window[1] < run.num_steps:
            # Wan2.2's first expert: the next expert's first steps must compute (no entries
            # yet), so they are reserved like the final steps; the budget is the whole run's.
            reserved = self.config.min_warmup_steps
        return Budget(
            step=run.step,
            num_steps=run.num_steps,
            target_speedup=self.config.target_speedup,
            spent=spent,
            final_steps=self.config.final_steps,
            reserved=reserved,
        )

    def _time_weight(self, run: _Run) -> float:
        if not self.config.time_weighting or not run.num_steps or run.num_steps < 2:
            return 1.0
        return self.profile.time_weight(run.step / (run.num_steps - 1))

    def _savings(self, run: _Run) -> dict[str, float]:
        """Fraction of the step's block compute each granularity saves (all branches)."""
        n, branches = self.num_blocks, max(1, self._n_branches(run))
        a, b = self._step_span
        span = run.span[1] - run.span[0]
        return {"step": (b - a) / n, "cfg": (branches - 1) / branches, "block": span / n}

    def _plan(self, action: str) -> Any:
        """Set the block plan of this forward for ``action``; may return a ready output."""
        run = self.run
        cache = run.caches[self.fw_branch]
        L = self.num_blocks
        if action == "compute":
            self.fw_skip = (L, L)
            self.fw_capture = True
        elif action in ("step", "block"):
            entry = cache.step if action == "step" else cache.span
            if entry is None:  # excluded by the table (entry_missing); stay safe
                self.fw_action, self.fw_reason = "compute", f"{action} entry unavailable"
                return self._plan("compute")
            self.fw_skip = self._step_span if action == "step" else entry.span
            self.fw_residual = entry
            if action == "step" and self.config.residual_order == 1:
                self.fw_residual = _extrapolate(entry, cache.step_prev, run.step)
        elif action == "cfg":
            delta = self._cfg_entry(cache)
            if delta is None or run.reference_now is None:  # excluded by the table; stay safe
                self.fw_action, self.fw_reason = "compute", "cfg entry unavailable"
                return self._plan("compute")
            if self.config.cfg_mode == "output":
                return cfg_residual(run.reference_now, delta.hidden)
            self.fw_skip = (0, L)
            self.fw_residual = cfg_residual(run.reference_now, delta.hidden)
        return None

    def _prepare_probe_none(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """EasyCache-style prediction: queue the input change of this step (reference only)."""
        if self._probe:
            return
        run = self.run
        x = self.spec.model_input.get(args, kwargs)
        if not isinstance(x, torch.Tensor):
            return
        if run.prev_input is not None and run.prev_input.shape == x.shape:
            self._pending.add(rel_l1_sums(x, run.prev_input), self._on_input_change)
        run.prev_input = x.detach().clone()

    def _on_input_change(self, value: float) -> None:
        self.run.input_change = value
        self.run.input_hist[self.run.step] = value

    # ------------------------------------------------------------------ blocks
    def run_block(
        self, index: int, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Execute block ``index`` according to the forward's plan."""
        a, b = self.fw_skip
        spec = self.spec
        if a <= index < b:
            hidden = spec.hidden.get(args, kwargs)
            encoder = spec.encoder.get(args, kwargs) if spec.returns_encoder else None
            if index == a:
                hidden, encoder = self._apply_residual(hidden, encoder)
            return (hidden, encoder) if spec.returns_encoder else hidden
        block_in = None
        if self.fw_capture:
            run = self.run
            if index == 0:
                self.fw_h0 = spec.hidden.get(args, kwargs)
            if index == run.span[0] and "block" in self._enabled and self.fw_writes:
                enc = spec.encoder.get(args, kwargs) if spec.returns_encoder else None
                self.fw_span_in = (spec.hidden.get(args, kwargs), enc)
            block_in = spec.hidden.get(args, kwargs) if self._sketching() else None
        out = forward(*args, **kwargs)
        self.fw_computed += 1
        if index == 0 and self._probe:
            out0 = out[0] if spec.returns_encoder else out
            self.fw_h1 = out0  # R_step of every branch starts after the probe block
            if self.fw_is_ref:
                self._on_probe(out0)
        if self.fw_capture:
            if block_in is not None:
                self._sketch(index, block_in, out[0] if spec.returns_encoder else out)
            if index == self.run.span[1] - 1 and self.fw_span_in is not None:
                out = self._capture_span(out)
            if index == self.num_blocks - 1:
                out = self._capture_stack(out)
        return out

    def _apply_residual(
        self, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        res = self.fw_residual
        if isinstance(res, Entry):
            hidden = hidden + res.hidden.to(hidden.dtype)
            if res.encoder is not None and encoder is not None:
                encoder = encoder + res.encoder.to(encoder.dtype)
        elif res is not None:
            hidden = hidden + res.to(hidden.dtype)
        return hidden, encoder

    @torch.compiler.disable
    def _on_probe(self, out0: torch.Tensor) -> None:
        """Block 0 of the reference ran: queue its residual change, then decide the step."""
        run = self.run
        probe = out0 - self.fw_h0
        if run.probe_prev is not None and run.probe_prev.shape == probe.shape:
            self._pending.add(rel_l1_sums(probe, run.probe_prev), self._on_probe_change)
        run.probe_prev = to_cache(probe, self._cache_dtype)
        if self.fw_decide_at_probe:
            self.fw_decide_at_probe = False
            self.fw_capture = False
            self._decide()
            self._plan(self.fw_action)

    def _on_probe_change(self, value: float) -> None:
        self.run.probe_change = value
        self.run.probe_hist[self.run.step] = value

    def _sketching(self) -> bool:
        return (
            self.config.block_span == "lowest_change"
            and self.fw_is_ref
            and "block" in self._enabled
            and not self.fw_half  # a half batch's sketch is not comparable with a whole one's
        )

    @torch.compiler.disable
    def _sketch(self, index: int, block_in: torch.Tensor, block_out: torch.Tensor) -> None:
        """Keep a few tokens of block ``index``'s residual to measure its change (lowest_change)."""
        residual = block_out - block_in
        if residual.dim() < 2:
            return
        # Context parallel: this rank's share of the tokens one process would sample, so the
        # reduced sketch change is the single-process one.
        rank, ranks = shard_position(self._pending.process_group)
        view = sketch_of(residual, self.config.sketch_tokens, rank, ranks)
        # A compact copy (the view would keep the whole residual alive).
        sketch = view.to(self._cache_dtype or view.dtype, copy=True)
        prev = self.run.sketches.get(index)
        if prev is not None and prev.shape == sketch.shape:
            self._pending.add(
                rel_l1_sums(sketch, prev), lambda v, i=index: self._on_block_change(i, v)
            )
        self.run.sketches[index] = sketch

    def _on_block_change(self, index: int, value: float) -> None:
        run = self.run
        run.block_change[index] = value
        cfg = self.config
        span = choose_span(
            self.num_blocks,
            cfg.head_blocks,
            cfg.tail_blocks,
            cfg.span_fraction,
            run.block_change,
            current=run.span,
            margin=cfg.span_switch_margin,
        )
        run.next_span = span if span != run.span else None

    @torch.compiler.disable
    def _capture_span(self, out: Any) -> Any:
        """Full compute: the span's output is known, store R_span = out − in (one per span)."""
        run = self.run
        spec = self.spec
        hidden_in, enc_in = self.fw_span_in  # type: ignore[misc]
        self.fw_span_in = None
        hidden_out = out[0] if spec.returns_encoder else out
        res_h = hidden_out - hidden_in
        if self.perturb is not None:
            hidden_out = self.perturb.apply("block", run.step, self.fw_branch, hidden_out, res_h)
            res_h = hidden_out - hidden_in
            out = (hidden_out, out[1]) if spec.returns_encoder else hidden_out
        if not self.fw_writes:
            return out
        res_e = None
        if spec.returns_encoder and run.span[1] < self.num_blocks and enc_in is not None:
            res_e = out[1] - enc_in
        cache = run.caches[self.fw_branch]
        new = Entry(to_cache(res_h, self._cache_dtype), run.step, run.span, None)
        if res_e is not None:
            new.encoder = to_cache(res_e, self._cache_dtype)
        old = cache.span
        if self.fw_is_ref and old is not None and old.span == new.span:
            age = run.step - old.step
            self._pending.add(
                rel_l1_sums(old.hidden, new.hidden), lambda v: self._on_dev("block", v, age)
            )
        cache.span = new
        self._guard(cache, "span", new)
        return out

    @torch.compiler.disable
    def _capture_stack(self, out: Any) -> Any:
        """Full compute: the stack's output is known, refresh step and cfg entries."""
        run = self.run
        spec = self.spec
        hidden_out = out[0] if spec.returns_encoder else out
        h0 = self.fw_h0
        if h0 is None:
            return out
        branch = self.fw_branch
        cache = run.caches[branch]
        if self.perturb is not None:
            hidden_out = self.perturb.apply("step", run.step, branch, hidden_out, hidden_out - h0)
        need_full = (
            "cfg" in self._enabled and self.config.cfg_mode == "residual_diff" and not run.batched
        )
        full = hidden_out - h0 if need_full else None
        if (
            need_full
            and not self.fw_is_ref
            and run.reference_fresh
            and run.reference_now is not None
        ):
            delta = run.reference_now - full
            if self.perturb is not None:
                noisy = self.perturb.apply("cfg", run.step, branch, hidden_out, delta)
                if noisy is not hidden_out:
                    hidden_out = noisy
                    full = hidden_out - h0
                    delta = run.reference_now - full
            self._store_delta(cache, "delta", delta)
        if self.fw_is_ref and need_full:
            run.reference_now = full
        if "step" in self._enabled and self.fw_writes:
            start = self.fw_h1 if (self._probe and self.fw_h1 is not None) else h0
            new = Entry(to_cache(hidden_out - start, self._cache_dtype), run.step)
            old = cache.step
            if self.fw_is_ref and old is not None:
                age = run.step - old.step
                self._pending.add(
                    rel_l1_sums(old.hidden, new.hidden), lambda v: self._on_dev("step", v, age)
                )
            if self.config.residual_order == 1:
                cache.step_prev = old
            cache.step = new
            self._guard(cache, "step", new)
        if spec.returns_encoder:
            return (hidden_out, out[1])
        return hidden_out

    def _store_delta(self, cache: _BranchCache, attr: str, delta: torch.Tensor) -> None:
        run = self.run
        new = Entry(to_cache(delta, self._cache_dtype), run.step)
        old = getattr(cache, attr)
        if old is not None and self._is_first_other(self.fw_branch):
            age = run.step - old.step
            self._pending.add(
                rel_l1_sums(old.hidden, new.hidden), lambda v: self._on_dev("cfg", v, age)
            )
        setattr(cache, attr, new)
        self._guard(cache, attr, new)

    def _guard(self, cache: _BranchCache, attr: str, entry: Entry) -> None:
        """Check a stored entry: within the byte budget now, finite at the next reduction."""
        limit = self.config.max_cache_bytes
        if limit is not None and self._entry_bytes() > limit:
            # Over the byte budget: this entry is not kept (the forwards that would have reused
            # it compute instead); the stats count it.
            if getattr(cache, attr) is entry:
                setattr(cache, attr, None)
            self.run.over_budget += 1
            return
        self._guard_finite(cache, attr, entry)

    def _guard_finite(self, cache: _BranchCache, attr: str, entry: Entry) -> None:
        """Queue a check that ``entry`` is finite; a non-finite entry is dropped, never reused.

        The count of non-finite values goes through the same one-per-forward reduction as every
        signal (all-reduced in sequence parallel, so every rank drops the entry together), and
        the reduction always happens before the next decision, so no reuse can see it first.
        A NaN the model itself produced is left in its output (the computed forward is
        untouched); only MixCache's copy is refused.
        """
        bad = torch.sum(~torch.isfinite(entry.hidden), dtype=torch.float32)
        if entry.encoder is not None:
            bad = bad + torch.sum(~torch.isfinite(entry.encoder), dtype=torch.float32)
        one = torch.ones((), dtype=torch.float32, device=bad.device)
        self._pending.add((bad, one), lambda v: self._on_nonfinite(cache, attr, entry, v))

    def _on_nonfinite(self, cache: _BranchCache, attr: str, entry: Entry, count: float) -> None:
        if count == 0:
            return
        run = self.run
        if getattr(cache, attr) is entry:
            setattr(cache, attr, None)
        if attr == "step" and cache.step_prev is entry:
            cache.step_prev = None
        run.nonfinite += 1
        if run.nonfinite == 1:
            logger.warning(
                "mixcache[%s]: a %s cache entry of step %d holds %d non-finite value(s); it was "
                "dropped and the steps that would have reused it compute instead",
                self.name,
                attr,
                entry.step,
                int(count),
            )

    def _is_first_other(self, branch: str) -> bool:
        others = [b for b in self.run.branches if b != self.run.reference]
        return bool(others) and others[0] == branch

    def _on_dev(self, granularity: str, value: float, age: int) -> None:
        """A fresh entry replaced an older one: drift rate for D^ψ, deviation for the interval."""
        run = self.run
        if not math.isfinite(value):
            return  # a non-finite entry (dropped by _guard) says nothing about the drift
        run.rates[granularity] = value / max(age, 1)
        if run.adapt_for == granularity:
            run.adapt_for = None
            run.policy, why = adapt_interval(run.policy, value, self.config)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("mixcache[%s]: %s", self.name, why)

    # ------------------------------------------------------------------ end of forward
    @torch.compiler.disable
    def end_forward(self, output: Any) -> None:
        """Record the forward and refresh output-level state."""
        run = self.run
        action = self.fw_action
        if action == "compute" and self.fw_computed == self.num_blocks and not self.fw_half:
            sample = _sample_of(output)
            if self.fw_is_ref:
                run.reference_fresh = True
                run.last_full_step = run.step
                if not self._probe:
                    self._track_output(sample)
                if run.batched:
                    self._store_batched_delta(sample)
                elif self.config.cfg_mode == "output" and "cfg" in self._enabled:
                    run.reference_now = sample
            elif (
                self.config.cfg_mode == "output"
                and "cfg" in self._enabled
                and run.reference_fresh
                and run.reference_now is not None
            ):
                self._store_delta(
                    run.caches[self.fw_branch], "delta_out", run.reference_now - sample
                )
        # Batched CFG: one forward is both branches, so a whole-batch block counts twice and
        # a cfg forward (cond half only) once, out of 2 x L per step.
        whole = 2 if run.batched and not self.fw_half else 1
        computed, total = self.fw_computed * whole, self.num_blocks * (2 if run.batched else 1)
        self.ledger[run.step] = self.ledger.get(run.step, 0) + computed
        held = self._held_bytes()
        run.peak_bytes = max(run.peak_bytes, held)
        run.records.append(
            DecisionRecord(
                step=run.step,
                branch=self.fw_branch,
                action="cfg" if self.fw_half else action,
                blocks_computed=computed,
                blocks_total=total,
                reason=self.fw_reason,
                model=self.name,
                cache_bytes=held,
                scores=self.fw_scores,
            )
        )
        self.fw_h0 = self.fw_h1 = None
        self.fw_span_in = None
        self.fw_residual = None

    # ------------------------------------------------------------------ batched CFG
    def _is_batched_cfg(self, branch: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """This forward is ``[uncond, cond]`` of a batched-CFG pipeline that runs CFG now."""
        layout = self._layout
        if layout is None or branch != layout.context or self.cfg_hint is None:
            return False
        x = self.spec.model_input.get(args, kwargs)
        batch_ok = isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] % 2 == 0
        return batch_ok and self.cfg_hint() is True

    def cond_half_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The forward's arguments for the cond half of the batch (a batched cfg step)."""
        layout = self._layout
        assert layout is not None
        x = self.spec.model_input.get(args, kwargs)
        params = self._forward_params
        return cond_half_inputs(
            args, kwargs, params, layout.batch_args, x.shape[0], layout.uncond_first
        )

    def whole_batch(self, cond: torch.Tensor) -> torch.Tensor:
        """The batch rebuilt from the cond half's output and the stored difference."""
        layout, delta = self._layout, self.run.caches[self.fw_branch].delta
        assert layout is not None and delta is not None
        return rebuild_batch(cond, delta.hidden, layout.uncond_first)

    def _store_batched_delta(self, sample: torch.Tensor) -> None:
        """Whole-batch compute: Δout = out_cond − out_uncond, and its drift for D^cfg."""
        assert self._layout is not None
        run = self.run
        uncond, cond = split_halves(sample, self._layout.uncond_first)
        cache = run.caches[self.fw_branch]
        new = Entry(to_cache(cond - uncond, self._cache_dtype), run.step)
        old = cache.delta
        if old is not None and old.hidden.shape == new.hidden.shape:
            age = run.step - old.step
            self._pending.add(
                rel_l1_sums(old.hidden, new.hidden), lambda v: self._on_dev("cfg", v, age)
            )
        cache.delta = new
        self._guard(cache, "delta", new)

    def _track_output(self, sample: torch.Tensor) -> None:
        """EasyCache ratio k = output change / input change between the last two full computes.

        Updated at every full compute of the reference, adjacent or not (EasyCache's
        transformation rate): the input change is the sum of the per-step input changes since
        the previous full compute, so k follows the run instead of keeping its first value.
        """
        run = self.run
        prev = run.prev_output
        if prev is not None and run.prev_output_step is not None and prev.shape == sample.shape:
            since, now = run.prev_output_step, run.step
            self._pending.add(
                rel_l1_sums(sample, prev), lambda v: self._on_output_change(v, since, now)
            )
        run.prev_output = sample.detach().clone()
        run.prev_output_step = run.step

    def _on_output_change(self, value: float, since: int, now: int) -> None:
        run = self.run
        # Per-step output change: what the trigger compares (one step's worth, gap or not).
        run.output_change = value / max(1, now - since)
        moved = sum(v for j, v in run.input_hist.items() if since < j <= now)
        if moved > 0:
            run.ratio_k = value / moved

    def _entry_bytes(self) -> int:
        """Bytes of the reusable entries (what ``max_cache_bytes`` bounds)."""
        return sum(
            e.nbytes for cache in self.run.caches.values() for e in cache.entries() if e is not None
        )

    def _held_bytes(self) -> int:
        run = self.run
        total = 0
        for cache in run.caches.values():
            for e in cache.entries():
                if e is not None:
                    total += e.nbytes
        for t in (run.probe_prev, run.reference_now, run.prev_input, run.prev_output):
            if t is not None:
                total += t.numel() * t.element_size()
        for t in run.sketches.values():
            total += t.numel() * t.element_size()
        return total

    @torch.compiler.disable
    def abort_forward(self) -> None:
        """The forward raised: forget its per-forward state (the run is reset at its next start)."""
        self._reset_forward()


def _extrapolate(entry: Entry, prev: Entry | None, step: int) -> Entry | torch.Tensor:
    """R(step) predicted linearly from the last two computed residuals ([ours], residual_order=1).

    R(step) = R1 + (R1 - R0) * (step - s1) / (s1 - s0), in step indices. With one entry (a reuse
    right after the first compute, which only a forced reuse can cause: the signals need two
    computed steps) it is plain reuse. Entries of one branch always share a shape. A
    low-precision cache (``cache_dtype``) is extrapolated in float32, not in its own precision.
    """
    if prev is None or prev.step >= entry.step:
        return entry
    k = (step - entry.step) / (entry.step - prev.step)
    dtype = torch.promote_types(entry.hidden.dtype, torch.float32)
    return torch.lerp(prev.hidden.to(dtype), entry.hidden.to(dtype), 1.0 + k)


def _oldest(entries: list[Entry | None]) -> int | None:
    """Step of the oldest entry; None if any is missing (or there are none)."""
    if not entries or any(e is None for e in entries):
        return None
    return min(e.step for e in entries if e is not None)


def _sample_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a transformer output (dataclass, tuple or tensor)."""
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, tuple | list):
        return output[0]
    return output
