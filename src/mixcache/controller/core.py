"""The controller: the one place that sequences hooks, policy and granularities.

One controller per hooked transformer. Per forward it asks the :class:`StepTracker` where the
forward falls (branch, step, generation), lets the step's first branch (the reference) take one
decision via :mod:`mixcache.policy` from what the step probe and the granularities measure, and
turns the decision into a :class:`ForwardPlan` that the block hooks execute (skip a span of
blocks, add a stored residual). On full computes the granularities refresh their entries; one
:class:`~mixcache.stats.DecisionRecord` is kept per forward. The controller holds no cache
entry itself: each granularity owns its entries, signal, saving and plan
(:mod:`mixcache.granularity`), the probe owns the step-change measurement (:mod:`.probe`).

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

from ..config import MixCacheConfig
from ..errors import ConfigError
from ..granularity import BlockReuse, CfgReuse, Entry, Granularity, StepReuse
from ..models import ModelSpec
from ..parallel import global_max, shard_position, sketch_of
from ..policy.budget import Budget
from ..policy.decision import (
    PolicyState,
    Situation,
    StepDecision,
    StepInputs,
    adapt_interval,
    blocked_reasons,
    decide_step,
    follow_decision,
)
from ..policy.planner import Plan, PlanOption, plan_options, plan_run
from ..policy.signals import PendingSignals
from ..policy.trigger import in_final_steps
from ..profiles import GRANULARITIES, ImpactProfile
from ..stats import CacheStats, DecisionRecord
from .plan import DEFAULT_BRANCH, ForwardPlan
from .probe import StepProbe, make_probe
from .steps import Located, StepTracker

logger = logging.getLogger("mixcache")

__all__ = ["Controller", "ForwardPlan", "Perturbation", "StepTracker"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
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
class _Run:
    """What lives for one generation besides the granularities' entries; replaced at its end."""

    policy: PolicyState
    steps: StepTracker = field(default_factory=StepTracker)
    adapt_for: str | None = None
    records: list[DecisionRecord] = field(default_factory=list)
    peak_bytes: int = 0
    nonfinite: int = 0  # cache entries dropped for holding NaN/inf
    over_budget: int = 0  # cache entries not kept because of max_cache_bytes
    first_step: int | None = None  # the generation's first step (its branches are all seen after)
    # The measured plan (config.planner="measured"): the schedule, the steps that computed
    # fully (its entries' steps), whether it must be made again, and what happened to it.
    plan: Plan | None = None
    plan_taus: tuple[float, ...] | None = None
    computes: list[int] = field(default_factory=list)
    replan: bool = False
    replans: int = 0
    plan_first: str | None = None
    plan_off: str | None = None
    plan_note: str | None = None  # said about a plan that was made (e.g. budget out of reach)
    # The plan's correction (config.plan_correction): the first measured drift over the
    # calibrated one, the error scale per step the current plan was made with, and why the
    # next re-plan happens.
    drift_ref: float | None = None
    plan_scale: tuple[float, ...] | None = None
    replan_why: str | None = None
    corrections: list[str] = field(default_factory=list)


class Controller:
    """Per-transformer MixCache sequencer (see module docstring)."""

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
        self.impact = impact.impacts()
        self.profile = impact
        self.name = name
        self.num_blocks = L = len(spec.blocks(module))
        self._num_steps_hint = num_steps_hint
        self._step_hint = step_hint
        # Steps [start, stop) this transformer runs (Wan2.2's experts), read once per generation.
        self.window_hint: Callable[[], tuple[int, int] | None] | None = None
        # The pipeline's do_classifier_free_guidance (None: unknown, e.g. a bare transformer).
        self.cfg_hint: Callable[[], bool | None] | None = None
        # The pipeline's CFG scale for this transformer (None: unknown); scales I^cfg per run.
        self.guidance_hint: Callable[[], float | None] | None = None
        # Normalised time of every step of the pipeline's call (None: unknown); the planner's
        # coordinate.
        self.taus_hint: Callable[[], list[float] | None] | None = None
        # Where the impact profile came from (said in the stats).
        self.profile_source: str | None = None
        # The other controllers of the same pipeline (Wan2.2: the other expert). When this one
        # starts its part of a generation, theirs is over: their entries are freed then.
        self.siblings: list[Controller] = []
        # Blocks run per step (all branches) in the current generation; shared with the
        # siblings, so the budget of a two-expert pipeline is planned over the whole run.
        self.ledger: dict[int, int] = {}
        # The stats of the parts of the current generation that have ended, shared with the
        # siblings like the ledger: its warnings (the speed budget is the whole run's) are
        # checked once, on the merged stats, when its last part ends.
        self.generation_parts: list[CacheStats] = []
        dtype = _DTYPES.get(config.cache_dtype) if config.cache_dtype else None
        self._enabled = frozenset(config.granularities)
        self._block_na: str | None = None
        if "block" in self._enabled and config.head_blocks + config.tail_blocks >= L:
            # Too few blocks for a span between head and tail: block reuse cannot act here.
            self._enabled = self._enabled - {"block"}
            self._block_na = (
                f"{L} blocks leave no span between head_blocks="
                f"{config.head_blocks} and tail_blocks={config.tail_blocks}"
            )
        # Positional parameter names of the forward (to find the batch arguments in ``args``).
        self._forward_params = tuple(inspect.signature(module.forward).parameters)
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
        self.probe: StepProbe = make_probe(
            config.step_probe, self._pending, dtype, lambda: self.run.steps.step
        )
        # Batched-CFG pipelines: the cfg granularity runs the cond half of the batch only. It
        # must know the step's decision before the forward starts, so not with a block probe
        # (its decision comes after block 0 has run on the whole batch).
        layout = (
            spec.batch_layout
            if "cfg" in self._enabled and not self.probe.decides_after_block0
            else None
        )
        self.step = StepReuse(
            self._pending,
            dtype,
            L,
            config.step_probe,
            config.residual_order,
            self.probe.step_signal,
            self._on_drift,
        )
        self.cfg = CfgReuse(
            self._pending,
            dtype,
            L,
            config.cfg_mode,
            layout,
            self._on_drift,
            config.residual_order,
        )
        self.block = BlockReuse(
            self._pending,
            dtype,
            L,
            config.head_blocks,
            config.tail_blocks,
            config.span_fraction,
            config.span_switch_margin,
            self._on_drift,
            config.residual_order,
        )
        self.granularities: dict[str, Granularity] = {
            "step": self.step,
            "cfg": self.cfg,
            "block": self.block,
        }
        self.fw = self._new_plan()

    # ------------------------------------------------------------------ generation lifecycle
    def _new_run(self) -> _Run:
        return _Run(policy=PolicyState.initial(self.config))

    def _new_plan(self, branch: str = DEFAULT_BRANCH) -> ForwardPlan:
        return ForwardPlan(skip=(self.num_blocks, self.num_blocks), branch=branch)

    def end_generation(self) -> None:
        """Finalise the current generation's stats and drop every cache (diffusers' reset)."""
        self._pending.clear()
        if self.run.records:
            self.last_stats = self._build_stats(self.run)
            self.generation_parts.append(self.last_stats)
        self.run = self._new_run()
        if self.generation_parts and not any(o.run.steps.step >= 0 for o in self.siblings):
            # No other part of this generation is still running: it is over.
            whole = CacheStats.merge(self.generation_parts)
            self.generation_parts.clear()
            names = "+".join(sorted([self.name, *(o.name for o in self.siblings)]))
            for text in whole.warnings:
                logger.warning("mixcache[%s]: %s", names, text)
        for g in self.granularities.values():
            g.reset()
        self.probe.reset()
        self.fw = self._new_plan()

    def current_stats(self) -> CacheStats:
        """Stats of the generation in progress (may be empty)."""
        return self._build_stats(self.run)

    def _build_stats(self, run: _Run) -> CacheStats:
        steps = run.steps
        complete = steps.num_steps is None or steps.step >= steps.num_steps - 1
        return CacheStats.build(
            run.records,
            cache_bytes=run.peak_bytes,
            trigger=run.policy.trigger_reason,
            unavailable=self._unavailable(steps),
            complete=complete,
            config_tag=self.config.tag(),
            # With siblings (Wan2.2's experts) each runs part of the steps by design; a
            # calibration run may start late by design (its prefix replays the exact run's).
            planned_steps=None if self.siblings or self.calibrating else steps.num_steps,
            dry_run=self.config.dry_run,
            planned_block_speedup=self.config.block_speedup,
            nonfinite_dropped=run.nonfinite,
            over_byte_budget=run.over_budget,
            preset=self.config.preset_name,
            plan=run.plan_first,
            replans=run.replans,
            plan_note=run.plan_off
            or "; ".join(filter(None, [run.plan_note, *run.corrections]))
            or None,
            profile=self.profile_source
            or (
                self.profile.family
                + ("" if self.profile.measured else " (no measured profile: impacts 1.0)")
            ),
        )

    def _unavailable(self, steps: StepTracker) -> dict[str, str]:
        out: dict[str, str] = {}
        if self._block_na is not None:
            out["block"] = self._block_na
        if "cfg" in self._enabled and len(steps.branches) < 2 and not steps.batched:
            # diffusers names the one forward of batched-CFG pipelines "cond_uncond", with or
            # without guidance; the pipeline says which (do_classifier_free_guidance).
            cfg_on = self.cfg_hint() if self.cfg_hint is not None else None
            if steps.branches == [_BATCHED_CFG_BRANCH] and cfg_on is not False:
                # Not "no CFG": cond and uncond are there, as the two halves of one batch.
                if self.spec.batch_layout is None:
                    why = "this model's batch layout is not known"
                elif self.probe.decides_after_block0:
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
                    f"only one branch ({', '.join(steps.branches) or 'none'}) per step: no CFG "
                    "pass to reuse (guidance-distilled model or guidance_scale <= 1)"
                )
        return out

    # ------------------------------------------------------------------ start of a forward
    @torch.compiler.disable
    def begin_forward(self, context: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Start a transformer forward. Returns an output to use instead of running it, or None."""
        first = self.run.steps.step < 0
        branch = self._advance(
            getattr(context, "name", None) or DEFAULT_BRANCH, context, args, kwargs
        )  # may end the previous generation
        self.fw = self._new_plan(branch)
        run, steps = self.run, self.run.steps
        if self.cfg.layout is not None and steps.step_branches == {branch}:
            steps.batched = self._is_batched_cfg(branch, args, kwargs)
        if first or not run.records:
            for other in self.siblings:
                if other.run.records:
                    # Wan2.2: the other expert's phase of this generation has ended.
                    other.end_generation()
        if steps.reference is None:
            self.refresh_wanted()
        if steps.reference is None or steps.decision is None:
            # First branch of the step (or the reference failed before deciding): it decides.
            return self.begin_forward_as_reference(branch, args, kwargs)
        action, reason = follow_decision(steps.decision.action, self._situation(branch, False))
        if self.config.dry_run and action != "compute":
            action, reason = "compute", f"dry run (would: {action})"
        self.fw.action, self.fw.reason = action, reason
        return self._plan(action)

    def begin_forward_as_reference(
        self, branch: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """First branch of the step: it is the reference and takes the step's decision."""
        self.run.steps.reference = branch
        self.fw.is_reference = True
        self.probe.before_reference(self.spec.model_input.get(args, kwargs))
        if self.probe.decides_after_block0 and self.num_blocks > 1:
            self.fw.decide_at_probe = True  # decided after block 0 (its residual is D_step)
            self.fw.capture = True
            return None
        self._decide()
        return self._plan(self.fw.action)

    def _advance(
        self, branch: str, context: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> str:
        """Place the forward in the run (:meth:`StepTracker.locate`); start a new generation when
        it begins one (docs/method.md, "Run boundaries"). Returns the branch name to use."""
        steps = self.run.steps
        step_index = getattr(context, "step_index", None)
        if step_index is None and self._step_hint is not None:
            # The scheduler's own step counter: no host sync on the timestep tensor.
            step_index = self._step_hint()
        where = steps.locate(branch, context, step_index, lambda: self._timestep(args, kwargs))
        if where.new_generation:
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("mixcache[%s]: new generation detected", self.name)
            timestep = steps.timestep
            self.end_generation()
            steps = self.run.steps
            steps.timestep = timestep
        if steps.step < 0:
            self._start_generation(where, context)
        if where.new_step or where.new_generation:
            self.cfg.new_step()
        steps.enter(where)
        return where.branch

    @property
    def calibrating(self) -> bool:
        """A calibration drives this run: it perturbs what is captured or forces decisions."""
        return self.perturb is not None or self.force is not None

    def refresh_wanted(self) -> None:
        """Set every granularity's :attr:`~mixcache.granularity.Granularity.wanted` for the step
        starting now: its entries are captured only while it can still be chosen.

        Not wanted: not in the config (or not applicable: block without a span), a granularity a
        planner switched off (``set_active(False)``), every granularity in the final steps (no
        later step may reuse what they would store; calibration, which perturbs and forces
        reuses there, keeps them; so does a plan that reuses the last step) and cfg when the run
        has no second branch
        (the pipeline says it runs no CFG, or a whole step went by with one unbatched branch).
        The decision never reads what is not captured then, so decisions are unchanged. From
        the first final step on every entry is freed as well (:meth:`Granularity.release`).
        """
        run, steps = self.run, self.run.steps
        # Calibration perturbs what is captured and forces reuses at any step, the last ones too.
        final = not self.calibrating and in_final_steps(steps.step, steps.num_steps, self.config)
        if final and run.plan is not None and steps.num_steps is not None:
            # A plan that reuses the last step (measured there: ErrorModel.last_impact) reads
            # the entries of the final computes before it.
            final = run.plan.action_at(steps.num_steps - 1)[0] == "compute"
        cfg_on = self.cfg_hint() if self.cfg_hint is not None else None
        one_branch = (
            run.first_step is not None
            and steps.step > run.first_step
            and len(steps.branches) < 2
            and not steps.batched
        )
        for name, g in self.granularities.items():
            wanted = g.active and name in self._enabled and not final
            if name == "cfg" and (cfg_on is False or one_branch):
                wanted = False
            g.wanted = wanted
            if final:
                g.release()  # the final steps compute: what is held now is never read again

    def _start_generation(self, where: Located, context: Any) -> None:
        steps = self.run.steps
        self.run.first_step = where.step
        # The pipeline's own count first: it is what the loop runs (strength included).
        steps.num_steps = (self._num_steps_hint() if self._num_steps_hint else None) or getattr(
            context, "num_inference_steps", None
        )
        steps.window = self.window_hint() if self.window_hint else None
        # I^cfg at this run's guidance scale (an uncond error is amplified by g - 1).
        self.impact = self.profile.impacts(self.guidance_hint() if self.guidance_hint else None)
        for j in [j for j in self.ledger if j >= where.step]:
            del self.ledger[j]  # the previous generation's spending

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
        steps = self.run.steps
        if is_ref:
            branches = steps.branches
            entry_step = {
                "step": self.step.oldest(branches),
                "block": self.block.oldest(branches),
                "cfg": self.cfg.oldest([b for b in branches if b != branch]),
            }
            span_ok = self.block.span_ok(branches)
            if steps.batched:  # the uncond half's difference, stored with the one branch
                delta = self.cfg.get(branch, "delta")
                entry_step["cfg"] = delta.step if delta else None
        else:
            entry_step = {}
            for g in GRANULARITIES:
                entry = self.granularities[g].entry(branch)
                entry_step[g] = entry.step if entry else None
            span_ok = self.block.span_ok([branch])
        signal = {}
        if is_ref:
            signal = {
                g: self.granularities[g].signal(entry_step[g], steps.step) for g in GRANULARITIES
            }
        return Situation(
            step=steps.step,
            enabled=tuple(g for g in GRANULARITIES if g in self._enabled),
            n_branches=steps.n_branches,
            is_reference=is_ref,
            reference_fresh=steps.reference_fresh,
            entry_step=entry_step,
            max_age=self.config.max_age,
            span_ok=span_ok,
            signal=signal,
        )

    def _decide(self) -> None:
        """Reduce pending signals (one sync), then take the step's decision."""
        self._pending.flush()
        run, steps, fw = self.run, self.run.steps, self.fw
        situation = self._situation(fw.branch, True)
        inputs = StepInputs(
            steps.step,
            steps.num_steps,
            self.probe.change,
            situation,
            self.impact,
            {g: self.granularities[g].saving(steps.n_branches) for g in GRANULARITIES},
            self._time_weight(steps),
            self._budget(steps),
        )
        streak = run.policy.reused_in_a_row
        forced = self.force(steps.step) if self.force is not None else None
        if forced is not None:
            # A forced reuse, like a planned one, needs no signal: the calibration measures
            # single reuses at every step a plan may reuse, step 1 included.
            blocked = blocked_reasons(situation, planned=True)
            if forced in blocked:
                decision = StepDecision("compute", f"forced {forced} impossible: {blocked[forced]}")
            else:
                self.forced_signal = situation.signal.get(forced)
                decision = StepDecision(forced, "forced (calibration)")
        elif self._planning(steps):
            decision = self._follow_plan(situation, steps)
        else:
            decision, run.policy = decide_step(inputs, run.policy, self.config)
        if decision.action == "compute":
            run.computes.append(steps.step)
        steps.decision = decision
        action, reason = decision.action, decision.reason
        if self.config.dry_run and action != "compute":
            action, reason = "compute", f"dry run (would: {action}; {reason})"
        if action == "cfg" and steps.batched:
            # Batched CFG: the forward runs the cond half of the batch; the uncond half is
            # rebuilt from the stored difference (TransformerHook). A half batch writes no entry.
            action, fw.half, fw.writes = "compute", True, False
            reason = f"cfg: cond half of the batch only ({decision.reason})"
        elif action == "cfg":
            action = "compute"  # the reference computes; the other branches reuse from it
            reason = f"compute (reference for cfg; {decision.reason})"
            # Joint scheduling (entries_share_a_step): the reference does not refresh its step and
            # block entries here, the uncond branch cannot; entries of all branches stay from one
            # step, so their errors stay correlated and largely cancel in the CFG combination.
            fw.writes = False
        fw.action, fw.reason = action, reason
        fw.scores = dict(decision.scores)
        if decision.action == "compute":
            # lowest_change: move the span only at a full compute of every branch, which writes
            # the span residuals for the new span right away (no step without a valid entry).
            self.block.move_span()
        # Adaptive interval (docs/method.md, "Step 3"): the full compute that ends a reuse streak
        # measures how far the last used cache had drifted; the measurement arrives with the next
        # flush.
        run.adapt_for = run.policy.last_cached if decision.action == "compute" and streak else None
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "mixcache[%s] step %d: %s (%s)",
                self.name,
                steps.step,
                decision.action,
                decision.reason,
            )

    # ------------------------------------------------------------------ measured plan
    def _planning(self, steps: StepTracker) -> bool:
        """Whether this step follows a measured plan (else the step-by-step price decides)."""
        cfg, run = self.config, self.run
        if cfg.block_speedup is None or cfg.planner != "measured" or run.plan_off is not None:
            return False
        why = None
        if self.profile.errors is None:
            why = "the impact profile has no error model"
        elif steps.num_steps is None:
            why = "the number of steps is unknown before the run"
        elif self.siblings and steps.window is None:
            why = "a two-expert pipeline whose split of the steps is unknown"
        if why is not None:
            run.plan_off = f"planner off ({why}): budget priced step by step"
            return False
        return True

    def _plan_options(self, steps: StepTracker) -> list[PlanOption]:
        forms = [f for f in self.config.plan_forms if f == "plain" or self.config.residual_order]
        costs = {
            g: 1.0 - self.granularities[g].saving(max(1, steps.n_branches))
            for g in self._enabled
            if self.granularities[g].active
            and not (g == "cfg" and steps.n_branches < 2 and not steps.batched)
        }
        return plan_options(self.profile.errors, tuple(self._enabled), forms, costs)

    def _make_plan(self, steps: StepTracker) -> Plan | None:
        run, n = self.run, steps.num_steps
        assert n is not None
        if run.plan_taus is None:
            taus = self.taus_hint() if self.taus_hint is not None else None
            if taus is None or len(taus) != n:
                taus = [1.0 - i / n for i in range(n)]  # unknown schedule: even in time
            run.plan_taus = tuple(taus)
        budget = self._budget(steps)
        assert budget is not None
        taus, total, final_steps = run.plan_taus, budget.total, self.config.final_steps
        stop = steps.window[1] if steps.window is not None else n
        if stop < n:
            # Wan2.2's first expert: its own steps, with their share of the run's budget (the
            # second expert plans the rest from what is left, on its own error model), leaving
            # the second at least what it must compute: its first step (no entries yet), the
            # final steps, and one compute per interval_max + 1 steps between them. Its last
            # step need not compute: the next one is the other expert's, which computes anyway.
            rest = n - stop
            free = max(0, rest - 1 - final_steps)
            least = min(rest, 1 + final_steps + free // (self.config.interval_max + 1))
            total = total - max(total * rest / n, least)
            taus, final_steps = taus[:stop], 0
        try:
            # Remembered per process: repeated generations, and new handles on the same
            # model, at the same steps, schedule, budget and scale plan once.
            return plan_run(
                self.profile.errors,
                taus,
                total,
                budget.spent,
                self._plan_options(steps),
                start=steps.step,
                computes=run.computes,
                guidance_scale=self._plan_guidance(steps),
                objective=self.config.plan_objective,
                max_streak=self.config.interval_max,
                final_steps=final_steps,
                last_computes=stop == n,
                scale=run.plan_scale,
            )
        except ConfigError as exc:
            run.plan_off = f"planner off ({exc}): budget priced step by step"
            return None

    def _plan_guidance(self, steps: StepTracker) -> float | None:
        """The CFG scale errors are read at: 1 without CFG, the pipeline's, or None (unknown:
        the calibration's)."""
        if steps.n_branches < 2 and not steps.batched:
            return 1.0
        return self.guidance_hint() if self.guidance_hint is not None else None

    def _follow_plan(self, situation: Situation, steps: StepTracker) -> StepDecision:
        """The step's action from the run's plan, re-planned from here when it cannot follow."""
        run = self.run
        if steps.step == 0 or not run.computes:
            return StepDecision("compute", "plan: first step computes")
        if run.plan is None or run.replan:
            again = run.plan is not None
            run.plan, run.replan = self._make_plan(steps), False
            if run.plan is None:
                return StepDecision("compute", run.plan_off or "planner off")
            run.replans += again
            if run.plan.out_of_reach and run.plan_note is None:
                # Said once a run; the end-of-run budget check warns about the miss itself.
                run.plan_note = (
                    f"budget x{self.config.block_speedup:g} out of reach at "
                    f"{steps.num_steps} steps (first step, final_steps={self.config.final_steps}, "
                    f"interval_max={self.config.interval_max}): planned the compute nearest to "
                    f"it any schedule has, {run.plan.cost:.2f} steps from step {steps.step}"
                )
                logger.info("mixcache[%s]: %s", self.name, run.plan_note)
            # A granularity the plan never uses again captures nothing from here on (a re-plan
            # only offers the ones still captured).
            used = set(run.plan.actions)
            for name, g in self.granularities.items():
                if name not in used:
                    g.set_active(False)
                    g.wanted = False  # the step's other branches capture nothing for it either
                    for entry in g.entries():  # and what it holds is freed now
                        g.discard(entry)
            if run.plan_first is None:
                # From the first step this transformer runs (Wan2.2's second expert: its own).
                first = steps.window[0] if steps.window is not None else 0
                run.plan_first = "C" * (steps.step - first) + run.plan.code()
        action, form = run.plan.action_at(steps.step)
        why, run.replan_why = (f"; {run.replan_why}" if run.replan_why else ""), None
        if action == "compute":
            return StepDecision("compute", f"plan: compute{why}")
        # The plan needs no signal (it was made from measured errors); every other rule holds.
        blocked = blocked_reasons(situation, planned=True)
        if action in blocked:
            run.replan = True  # what follows was planned on this reuse's entries
            return StepDecision("compute", f"plan: {action} impossible ({blocked[action]})")
        order = 1 if form == "linear" else 0
        for g in self.granularities.values():
            g.use_form(order, run.plan_taus)
        return StepDecision(action, f"plan: {action} ({form}){why}")

    def _budget(self, steps: StepTracker) -> Budget | None:
        """Budget mode: compute spent on the previous steps, in units of one full step."""
        if self.config.block_speedup is None:
            return None
        # Blocks run (every branch) on the steps before this one, in units of one full step;
        # counted at decision time, when every branch of the run has been seen.
        per_step = self.num_blocks * max(1, steps.n_branches)
        spent = sum(n for j, n in self.ledger.items() if j < steps.step) / per_step
        reserved = 0
        window, num_steps = steps.window, steps.num_steps
        if window is not None and num_steps is not None and window[1] < num_steps:
            # Wan2.2's first expert: the next expert's first steps must compute (no entries
            # yet), so they are reserved like the final steps; the budget is the whole run's.
            reserved = self.config.min_warmup_steps
        return Budget(
            step=steps.step,
            num_steps=num_steps,
            block_speedup=self.config.block_speedup,
            spent=spent,
            final_steps=self.config.final_steps,
            reserved=reserved,
        )

    def _time_weight(self, steps: StepTracker) -> float:
        if not self.config.time_weighting or not steps.num_steps or steps.num_steps < 2:
            return 1.0
        return self.profile.time_weight(steps.step / (steps.num_steps - 1))

    def _plan(self, action: str) -> Any:
        """Set the block plan of this forward for ``action``; may return a ready output."""
        fw = self.fw
        if action == "compute":
            fw.skip = (self.num_blocks, self.num_blocks)
            fw.capture = True
            return None
        reuse = self.granularities[action].plan(fw.branch, self.run.steps.step)
        if reuse is None:  # excluded by the table (entry_missing); stay safe
            fw.action, fw.reason = "compute", f"{action} entry unavailable"
            return self._plan("compute")
        if reuse.output is not None:
            return reuse.output
        fw.skip, fw.residual, fw.fresh = reuse.skip, reuse.residual, reuse.fresh
        return None

    # ------------------------------------------------------------------ blocks
    @torch.compiler.disable(recursive=False)
    def run_block(
        self, index: int, forward: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Any:
        """Execute block ``index`` according to the forward's plan.

        Compilation (docs/compatibility.md): this frame and the plan's bookkeeping around the
        block run eagerly (``torch.compiler.disable``), the block's own ``forward`` is traced
        on its own, so a compiled block sees the same code and guards as without MixCache and
        no decision state (block index, plan, span) ends up in a guard.
        """
        if self._plain_block(index):
            # Nothing to capture or skip here: run it without the bookkeeping calls (each
            # compile-disabled call costs a frame switch, ~1 % of a small model's generation).
            self.fw.computed += 1
            return forward(*args, **kwargs)
        skipped = self._before_block(index, args, kwargs)
        if skipped is not None:
            return skipped
        return self._after_block(index, forward(*args, **kwargs))

    def _plain_block(self, index: int) -> bool:
        """Block ``index`` runs and nothing is captured around it: not skipped, not the first
        or last block (the stack's captures, the probe), not a span boundary, no sketch."""
        a, b = self.fw.skip
        span = self.block.span
        return (
            0 < index < self.num_blocks - 1
            and not a <= index < b
            and index != span[0]
            and index != span[1] - 1
            and self.config.block_span != "lowest_change"
        )

    @torch.compiler.disable
    def _before_block(self, index: int, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """A skipped block: its output (with the residual added at the span's first block).
        A block that runs: its captures before the block, then None."""
        fw, spec = self.fw, self.spec
        a, b = fw.skip
        if a <= index < b:
            hidden = spec.hidden.get(args, kwargs)
            encoder = spec.encoder.get(args, kwargs) if spec.returns_encoder else None
            if index == a:
                hidden, encoder = self._apply_residual(hidden, encoder)
            return (hidden, encoder) if spec.returns_encoder else hidden
        fw.block_in = None
        if fw.capture:
            if index == 0:
                fw.h0 = self._hold_h0(spec.hidden.get(args, kwargs))
            if index == self.block.span[0] and self.block.wanted and fw.writes:
                enc = spec.encoder.get(args, kwargs) if spec.returns_encoder else None
                fw.span_in = (self._hold_span_in(spec.hidden.get(args, kwargs)), enc)
            fw.block_in = spec.hidden.get(args, kwargs) if self._sketching() else None
        return None

    def _hold_h0(self, h0: torch.Tensor) -> torch.Tensor | None:
        """What a full compute keeps of the hidden state entering block 0 until the stack's
        end: a copy in the step entry this compute's store discards, when there is one (the
        cached run's peak then stays within the uncached peak plus the entries), else ``h0``."""
        fw = self.fw
        if self.perturb is not None or self.probe.decides_after_block0:
            return h0  # both read h0 itself (the probe at block 0, the perturbation at the end)
        writes_step = fw.writes and self.step.wanted
        if not writes_step:
            # No step entry to store from it (the final steps, a cfg step's reference, step
            # switched off): held only for the cfg reference, else not at all.
            return h0 if self._needs_full() else None
        buf = self.step.take_prev(fw.branch, "step", h0)
        if buf is None:
            return h0
        fw.h0_owned = True
        return buf.copy_(h0)

    def _hold_span_in(self, hidden: torch.Tensor) -> torch.Tensor:
        """The same for the hidden state entering the block span (:meth:`_hold_h0`)."""
        buf = (
            None
            if self.perturb is not None
            else self.block.take_prev(self.fw.branch, "span", hidden)
        )
        if buf is None:
            return hidden
        self.fw.span_owned = True
        return buf.copy_(hidden)

    @torch.compiler.disable
    def _after_block(self, index: int, out: Any) -> Any:
        """Block ``index`` ran: the probe, the sketch and the captures that follow it."""
        fw, spec = self.fw, self.spec
        fw.computed += 1
        if index == 0 and self.probe.decides_after_block0:
            out0 = out[0] if spec.returns_encoder else out
            fw.h1 = out0  # R_step of every branch starts after the probe block
            if fw.is_reference:
                self._on_probe(out0)
        if fw.capture:
            if fw.block_in is not None:
                self._sketch(index, fw.block_in, out[0] if spec.returns_encoder else out)
                fw.block_in = None
            if index == self.block.span[1] - 1 and fw.span_in is not None:
                out = self._capture_span(out)
            if index == self.num_blocks - 1:
                out = self._capture_stack(out)
        return out

    def _apply_residual(
        self, hidden: torch.Tensor, encoder: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        res, fresh = self.fw.residual, self.fw.fresh
        if isinstance(res, Entry):
            hidden = _add_residual(hidden, res.hidden, fresh)
            if res.encoder is not None and encoder is not None:
                encoder = encoder + res.encoder.to(encoder.dtype)
        elif res is not None:
            hidden = _add_residual(hidden, res, fresh)
        return hidden, encoder

    @torch.compiler.disable
    def _on_probe(self, out0: torch.Tensor) -> None:
        """Block 0 of the reference ran: queue its residual change, then decide the step."""
        self.probe.on_block0(out0 - self.fw.h0)
        if self.fw.decide_at_probe:
            self.fw.decide_at_probe = False
            self.fw.capture = False
            self._decide()
            self._plan(self.fw.action)

    def _sketching(self) -> bool:
        return (
            self.config.block_span == "lowest_change"
            and self.fw.is_reference
            and self.block.wanted
            and not self.fw.half  # a half batch's sketch is not comparable with a whole one's
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
        self.block.sketch(index, sketch_of(residual, self.config.sketch_tokens, rank, ranks))

    @torch.compiler.disable
    def _capture_span(self, out: Any) -> Any:
        """Full compute: the span's output is known, store R_span = out − in (one per span)."""
        fw, spec, step = self.fw, self.spec, self.run.steps.step
        hidden_in, enc_in = fw.span_in  # type: ignore[misc]
        fw.span_in = None
        hidden_out = out[0] if spec.returns_encoder else out
        res_h = _minus(hidden_out, hidden_in, fw.span_owned)
        if self.perturb is not None:
            hidden_out = self.perturb.apply("block", step, fw.branch, hidden_out, res_h)
            res_h = hidden_out - hidden_in
            out = (hidden_out, out[1]) if spec.returns_encoder else hidden_out
        if not fw.writes:
            return out
        res_e = None
        if spec.returns_encoder and self.block.span[1] < self.num_blocks and enc_in is not None:
            res_e = out[1] - enc_in
        entry = self.block.store(fw.branch, step, res_h, res_e, track=fw.is_reference)
        self._guard(self.block, fw.branch, "span", entry)
        return out

    @torch.compiler.disable
    def _capture_stack(self, out: Any) -> Any:
        """Full compute: the stack's output is known, refresh step and cfg entries."""
        fw, spec, steps = self.fw, self.spec, self.run.steps
        hidden_out = out[0] if spec.returns_encoder else out
        h0 = fw.h0
        if h0 is None:
            return out
        branch, cfg = fw.branch, self.cfg
        if self.perturb is not None:
            hidden_out = self.perturb.apply("step", steps.step, branch, hidden_out, hidden_out - h0)
        need_full = self._needs_full()
        # h0 owned (a cache buffer): R = hL − h0 is written into it; it is taken once (the
        # perturbation, which re-reads h0, never runs with it owned).
        full = _minus(hidden_out, h0, fw.h0_owned) if need_full else None
        if (
            need_full
            and not fw.is_reference
            and steps.reference_fresh
            and cfg.reference_now is not None
        ):
            buf = cfg.take_prev(branch, "delta", full) if self.perturb is None else None
            delta = (
                cfg.reference_now - full
                if buf is None
                else torch.sub(cfg.reference_now, full, out=buf)
            )
            if self.perturb is not None:
                noisy = self.perturb.apply("cfg", steps.step, branch, hidden_out, delta)
                if noisy is not hidden_out:
                    hidden_out = noisy
                    full = hidden_out - h0
                    delta = cfg.reference_now - full
            self._store_delta(branch, "delta", delta)
        if fw.is_reference and need_full:
            cfg.reference_now = full
        if self.step.wanted and fw.writes:
            start = fw.h1 if (self.probe.decides_after_block0 and fw.h1 is not None) else h0
            # Without the probe R_b = hL − h0 is the residual cfg has just taken: not twice.
            if full is not None and start is h0:
                residual = full
            else:
                residual = _minus(hidden_out, start, fw.h0_owned and start is h0)
            entry = self.step.store(branch, steps.step, residual, fw.is_reference)
            self._guard(self.step, branch, "step", entry)
        if spec.returns_encoder:
            return (hidden_out, out[1])
        return hidden_out

    def _needs_full(self) -> bool:
        """This compute takes the stack residual hL − h0 for cfg (unbatched residual_diff)."""
        cfg = self.cfg
        return (
            cfg.wanted
            and cfg.mode == "residual_diff"
            and not self.run.steps.batched
            and not self._one_branch()
        )

    def _one_branch(self) -> bool:
        """A step of this controller has run with a single branch (guidance-distilled model, CFG
        off): no cfg reference is captured, nothing could use it. Until a step has been seen
        (the first one: the branches are not known yet) it is captured."""
        records, steps = self.run.records, self.run.steps
        return bool(records) and records[0].step < steps.step and len(steps.branches) < 2

    def _store_delta(self, branch: str, slot: str, delta: torch.Tensor) -> None:
        # The drift of ΔR is tracked on the first non-reference branch only (one rate for cfg).
        others = self.run.steps.others()
        first_other = bool(others) and others[0] == branch
        entry = self.cfg.store(branch, slot, delta, self.run.steps.step, track=first_other)
        self._guard(self.cfg, branch, slot, entry)

    def _guard(self, owner: Granularity, branch: str, slot: str, entry: Entry) -> None:
        """Check a stored entry: within the byte budget now, finite at the next reduction.

        The signals queued here never depend on whether the limit is hit: under context
        parallel every rank reduces ONE stacked tensor, so a rank that queued fewer values than
        another would hang the all-reduce. With ``max_cache_bytes`` set, whether this rank is over
        it is reduced too (ranks hold different bytes when the tokens do not split evenly) and an
        entry any rank drops is dropped by all at the next reduction, before any reuse reads it:
        ranks that kept different entries would take different decisions.
        """
        limit = self.config.max_cache_bytes
        if limit is not None:
            over = self._entry_bytes() > limit
            if over:
                # Freed now (the limit bounds memory): the forwards that would have reused it
                # compute instead.
                self._drop_over_budget(owner, branch, slot, entry)
            flag = torch.full((), float(over), dtype=torch.float32, device=entry.hidden.device)
            one = torch.ones((), dtype=torch.float32, device=entry.hidden.device)
            self._pending.add(
                (flag, one),
                lambda v: self._drop_over_budget(owner, branch, slot, entry) if v > 0 else None,
            )
        self._guard_finite(owner, slot, entry)

    def _drop_over_budget(self, owner: Granularity, branch: str, slot: str, entry: Entry) -> None:
        """Drop ``entry``: over ``max_cache_bytes`` here or on another rank (counted once)."""
        if owner.get(branch, slot) is entry:
            owner.put(branch, slot, None)
            self.run.over_budget += 1

    def _guard_finite(self, owner: Granularity, slot: str, entry: Entry) -> None:
        """Queue a check that ``entry`` is finite; a non-finite entry is dropped, never reused.

        The count of non-finite values goes through the same one-per-forward reduction as every
        signal (all-reduced in sequence parallel, so every rank drops the entry together), and
        the reduction always happens before the next decision, so no reuse can see it first.
        A NaN the model itself produced is left in its output (the computed forward is
        untouched); only MixCache's copy is refused.

        No pass of its own where a sum is already taken: a sum is NaN/inf iff some element is
        (or the sum overflows float32, ~3e38: no usable residual), so a tracked entry's drift
        denominator sum|new| is the check, and an untracked one costs one plain sum.
        """
        total = owner.last_abs_sum if owner.last_stored is entry else None
        if total is None:
            total = torch.sum(entry.hidden, dtype=torch.float32)
        if entry.encoder is not None:
            total = total + torch.sum(entry.encoder, dtype=torch.float32)
        one = torch.ones((), dtype=torch.float32, device=total.device)
        self._pending.add((total, one), lambda v: self._on_nonfinite(owner, slot, entry, v))

    def _on_nonfinite(self, owner: Granularity, slot: str, entry: Entry, total: float) -> None:
        if math.isfinite(total):
            return
        owner.discard(entry)
        run = self.run
        run.nonfinite += 1
        if run.nonfinite == 1:
            logger.warning(
                "mixcache[%s]: a %s cache entry of step %d holds non-finite values; it was "
                "dropped and the steps that would have reused it compute instead",
                self.name,
                slot,
                entry.step,
            )

    def _on_drift(self, granularity: str, value: float, age: int) -> None:
        """A fresh entry replaced an older one (its rate is updated): the full compute that ended
        a reuse streak of ``granularity`` adapts the interval to how far its cache had drifted."""
        run = self.run
        if self.config.block_speedup is not None:
            # Budget mode is scale-free: delta1/delta2 are in one model's units of drift, so
            # they do not act there (the budget and interval_max bound the streaks); a measured
            # plan compares the step residual's drift with the calibration's instead.
            if granularity == "step":
                self._correct_plan(value, age)
            return
        if run.adapt_for == granularity:
            run.adapt_for = None
            run.policy, why = adapt_interval(run.policy, value, self.config)
            if logger.isEnabledFor(logging.DEBUG):
                logger.debug("mixcache[%s]: %s", self.name, why)

    def _correct_plan(self, drift: float, age: int) -> None:
        """The plan follows the prompt (``config.plan_correction``; docs/method.md, "Correcting
        it"): how far the reference branch's stack residual moved between its last two
        entries, over what the calibration measured between the same points of the run, is
        this prompt's error scale there. Its ratio to the run's first such reading is what can
        change a plan (a scale the whole run shares changes no plan); when that ratio exceeds
        the scale the current plan assumed at the step just read by more than the factor, the
        next steps — as many as the reading spanned — are re-planned with their errors scaled
        by it. The drift is reduced over every rank, so under context parallel every rank
        corrects alike."""
        run, factor, errors = self.run, self.config.plan_correction, self.profile.errors
        entry, taus = self.step.last_stored, run.plan_taus
        if factor is None or run.plan is None or errors is None or entry is None or not taus:
            return
        made, n = entry.step, len(taus)
        if not (1 <= age <= made < n and drift > 0):
            return
        expected = errors.reuse_error("step", "plain", taus[made - age], taus[made], None, 1.0)
        if not (math.isfinite(expected) and expected > 0 and math.isfinite(drift)):
            return
        if run.drift_ref is None:
            run.drift_ref = drift / expected
            return
        phi = drift / expected / run.drift_ref
        # Only a prompt moving faster than calibrated re-plans (computes move towards it). A
        # slower one is not discounted: the re-plan lengthens a reuse streak, and late in a run
        # (where every such re-plan measured on the trained models happened, at x0.48-0.49) a
        # streak measures worse than the additive model predicts (docs/bench/tuning/r15, r16).
        assumed = run.plan_scale[made] if run.plan_scale is not None else 1.0
        if phi / assumed <= factor:
            return
        ahead = range(made + 1, min(n, made + 1 + age))
        run.plan_scale = tuple(phi if t in ahead else 1.0 for t in range(n))
        run.replan = True
        run.replan_why = (
            f"re-planned at step {made + 1}: the residual moved x{phi:.2f} of the calibrated "
            f"change (relative to this run's first reading) over steps {made - age}-{made}, "
            f"so the errors of steps {made + 1}-{ahead[-1] if ahead else made} count x{phi:.2f}"
        )
        run.corrections.append(run.replan_why)
        logger.info("mixcache[%s]: %s", self.name, run.replan_why)

    # ------------------------------------------------------------------ end of forward
    @torch.compiler.disable
    def end_forward(self, output: Any) -> None:
        """Record the forward and refresh output-level state."""
        run, steps, fw = self.run, self.run.steps, self.fw
        if fw.action == "compute" and fw.computed == self.num_blocks and not fw.half:
            sample = _sample_of(output)
            output_mode = (
                self.config.cfg_mode == "output" and self.cfg.wanted and not self._one_branch()
            )
            if fw.is_reference:
                steps.reference_fresh = True
                steps.last_full_step = steps.step
                self.probe.on_full_output(sample, steps.step)
                if steps.batched and self.cfg.wanted:
                    entry = self.cfg.store_batched(fw.branch, sample, steps.step)
                    self._guard(self.cfg, fw.branch, "delta", entry)
                elif output_mode:
                    self.cfg.reference_now = sample
            elif output_mode and steps.reference_fresh and self.cfg.reference_now is not None:
                self._store_delta(fw.branch, "delta_out", self.cfg.reference_now - sample)
        # Batched CFG: one forward is both branches, so a whole-batch block counts twice and
        # a cfg forward (cond half only) once, out of 2 x L per step.
        whole = 2 if steps.batched and not fw.half else 1
        computed, total = fw.computed * whole, self.num_blocks * (2 if steps.batched else 1)
        self.ledger[steps.step] = self.ledger.get(steps.step, 0) + computed
        held = self._held_bytes()
        run.peak_bytes = max(run.peak_bytes, held)
        run.records.append(
            DecisionRecord(
                step=steps.step,
                branch=fw.branch,
                action="cfg" if fw.half else fw.action,
                blocks_computed=computed,
                blocks_total=total,
                reason=fw.reason,
                model=self.name,
                cache_bytes=held,
                scores=fw.scores,
            )
        )
        fw.h0 = fw.h1 = fw.block_in = None
        fw.span_in = None
        fw.residual, fw.fresh = None, False

    # ------------------------------------------------------------------ batched CFG
    def _is_batched_cfg(self, branch: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        """This forward is ``[uncond, cond]`` of a batched-CFG pipeline that runs CFG now."""
        layout = self.cfg.layout
        if layout is None or branch != layout.context or self.cfg_hint is None:
            return False
        return self.cfg.splits(self.spec.model_input.get(args, kwargs), self.cfg_hint())

    def cond_half_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The forward's arguments for the cond half of the batch (a batched cfg step)."""
        x = self.spec.model_input.get(args, kwargs)
        return self.cfg.half_inputs(args, kwargs, self._forward_params, x.shape[0])

    def whole_batch(self, cond: torch.Tensor) -> torch.Tensor:
        """The batch rebuilt from the cond half's output and the stored difference."""
        return self.cfg.rebuild(self.fw.branch, cond, self.run.steps.step)

    # ------------------------------------------------------------------ memory
    def _entry_bytes(self) -> int:
        """Bytes of the reusable entries (what ``max_cache_bytes`` bounds)."""
        return sum(g.nbytes for g in self.granularities.values())

    def _held_bytes(self) -> int:
        """Everything MixCache holds: entries, the probe's and granularities' other tensors."""
        tensors = [*self.probe.tensors()]
        for g in self.granularities.values():
            tensors.extend(g.tensors())
        # cfg's reference residual and the step entry it equals are one tensor: counted once.
        entries = {_storage(e.hidden) for g in self.granularities.values() for e in g.entries()}
        extra = [t for t in tensors if _storage(t) not in entries]
        return self._entry_bytes() + sum(t.numel() * t.element_size() for t in extra)

    @torch.compiler.disable
    def abort_forward(self) -> None:
        """The forward raised (out of memory, an interrupt): the generation ends here.

        Its stats are kept (marked incomplete) and every entry, queued signal and probe tensor
        is freed now, not at the next call or ``remove()``: after an out-of-memory error the
        caller needs that memory back, and the next call starts as a fresh controller would.
        """
        self.end_generation()


def _storage(t: torch.Tensor) -> tuple[int, int, tuple[int, ...]]:
    """Where a tensor's data lies (a detached view of a tensor shares it)."""
    return t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape)


def _minus(out: torch.Tensor, start: torch.Tensor, into_start: bool) -> torch.Tensor:
    """``out − start``; written into ``start`` when it is a buffer of the cache's own."""
    return torch.sub(out, start, out=start) if into_start else out - start


def _add_residual(hidden: torch.Tensor, residual: torch.Tensor, fresh: bool) -> torch.Tensor:
    """``hidden + residual`` in the hidden state's dtype; into ``residual`` itself when it is a
    temporary of this reuse (``fresh``) of the same dtype and shape (one hidden-size allocation
    less; addition commutes, so the result is bit-identical)."""
    if (
        fresh
        and residual.dtype == hidden.dtype
        and residual.shape == hidden.shape
        and not hidden.requires_grad
    ):
        return residual.add_(hidden)
    return hidden + residual.to(hidden.dtype)


def _sample_of(output: Any) -> torch.Tensor:
    """The prediction tensor of a transformer output (dataclass, tuple or tensor)."""
    if hasattr(output, "sample"):
        return output.sample
    if isinstance(output, tuple | list):
        return output[0]
    return output
