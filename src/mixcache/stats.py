"""What MixCache did during a generation: one record per transformer forward, and totals.

Two speedups are reported and always labelled: *block compute* (uncached transformer blocks /
blocks run; what a speed budget plans, known exactly after every run) and *wall clock* (uncached
seconds / cached seconds, only when the caller measured both: MixCache cannot time an uncached
run it did not make). Block compute is an upper bound of wall clock: text encoding, VAE decode,
the blocks that always run and MixCache's own work are outside it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from .profiles import GRANULARITIES

__all__ = ["CacheStats", "DecisionRecord", "Records"]


@dataclass(frozen=True)
class DecisionRecord:
    """One transformer forward.

    Attributes:
        step: denoising step, 0-based.
        branch: cache-context name (``"cond"``, ``"uncond"``; ``"default"`` outside any context).
        action: ``"compute"``, ``"step"``, ``"cfg"`` or ``"block"``.
        blocks_computed, blocks_total: transformer blocks run / present.
        reason: why this action (short text).
        model: which transformer (``"transformer"``, ``"transformer_2"``).
        cache_bytes: bytes held by the caches after this forward.
        scores: the hybrid scores P^ψ considered at this step (reference branch only).
    """

    step: int
    branch: str
    action: str
    blocks_computed: int
    blocks_total: int
    reason: str
    model: str = "transformer"
    cache_bytes: int = 0
    scores: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["scores"] = dict(self.scores)
        return out


class Records(tuple):
    """The run's :class:`DecisionRecord` s (a tuple); called, a list of dicts.

    ``stats.records[0].action`` reads one record; ``stats.records()`` gives
    ``[record.to_dict(), ...]``, ready for ``pandas.DataFrame(stats.records())``.
    """

    __slots__ = ()

    def __call__(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self]


_NO_RECORDS = Records()


@dataclass(frozen=True, repr=False)
class CacheStats:
    """Summary of one generation (the last completed one, from ``handle.stats()``).

    Attributes:
        records: one :class:`DecisionRecord` per transformer forward, in call order.
        compute_fraction: blocks computed / blocks total over the run (1.0 = nothing reused).
        cache_bytes: peak bytes held by the caches during the run.
        trigger: why (and at which step) caching started, or ``None`` if it never did.
        unavailable: granularities that could not act in this run, with the reason.
        complete: the run reached its last step (False after an interruption).
        config_tag: :meth:`MixCacheConfig.tag` of the config used.
        ranks: ranks sharing the sequence (context parallel); ``cache_bytes`` and every record's
            bytes are then this rank's own, each rank holding its shard.
        planned_block_speedup: the block-compute speedup the config's budget asked for
            (``block_speedup``; ``None`` in threshold mode). ``target_speedup`` is a read-only
            alias.
        wall_clock_speedup: uncached / cached seconds, when the caller measured them
            (:meth:`with_wall_clock`); ``None`` otherwise.
        preset: the config's preset name (``None``: a custom config).
        profile: the impact profile used: where it was found and what it was measured on.
        plan: the measured plan made before the run (``config.planner="measured"``), one letter
            a step (:meth:`mixcache.policy.planner.Plan.code`); None when no plan was made.
        replans: how many times the run re-planned (a planned reuse was impossible).
        plan_note: why no plan was made (the budget was then priced step by step), or what
            was said about the plan made (a budget out of reach).

    ``str(stats)`` and :meth:`summary` give a few lines; :meth:`table` the per-step table;
    ``stats.records()`` a list of dicts.
    """

    records: Records = _NO_RECORDS
    compute_fraction: float = 1.0
    cache_bytes: int = 0
    trigger: str | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)
    complete: bool = True
    config_tag: str = ""
    ranks: int = 1
    planned_steps: int | None = None
    dry_run: bool = False
    planned_block_speedup: float | None = None
    nonfinite_dropped: int = 0
    over_byte_budget: int = 0
    wall_clock_speedup: float | None = None
    preset: str | None = None
    profile: str = ""
    plan: str | None = None
    replans: int = 0
    plan_note: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.records, Records):
            object.__setattr__(self, "records", Records(self.records))

    @property
    def target_speedup(self) -> float | None:
        """Read-only alias of :attr:`planned_block_speedup` (its name before 0.2)."""
        return self.planned_block_speedup

    @property
    def block_speedup(self) -> float:
        """Block-compute speedup achieved: uncached blocks / blocks run (1.0: nothing reused)."""
        return 1.0 / max(self.compute_fraction, 1e-9)

    @property
    def budget_met(self) -> bool | None:
        """Whether the block compute landed within 5 % of the budget (None: no budget, dry run
        or no record)."""
        if self.planned_block_speedup is None or self.dry_run or not self.records:
            return None
        want = 1.0 / self.planned_block_speedup
        return abs(self.compute_fraction - want) <= 0.05 * want + 1e-9

    def with_wall_clock(self, uncached_seconds: float, cached_seconds: float) -> CacheStats:
        """A copy that also reports the wall-clock speedup ``uncached / cached`` the caller
        measured (same prompt, steps and resolution, after a warm-up run)."""
        for name, value in (
            ("uncached_seconds", uncached_seconds),
            ("cached_seconds", cached_seconds),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ValueError(
                    f"{name}={value!r} is invalid: must be a finite number of seconds > 0"
                )
        return replace(self, wall_clock_speedup=float(uncached_seconds) / float(cached_seconds))

    @classmethod
    def build(
        cls,
        records: Iterable[DecisionRecord],
        *,
        cache_bytes: int = 0,
        trigger: str | None = None,
        unavailable: Mapping[str, str] | None = None,
        complete: bool = True,
        config_tag: str = "",
        planned_steps: int | None = None,
        dry_run: bool = False,
        planned_block_speedup: float | None = None,
        nonfinite_dropped: int = 0,
        over_byte_budget: int = 0,
        preset: str | None = None,
        profile: str = "",
        plan: str | None = None,
        replans: int = 0,
        plan_note: str | None = None,
    ) -> CacheStats:
        recs = Records(records)
        total = sum(r.blocks_total for r in recs)
        done = sum(r.blocks_computed for r in recs)
        return cls(
            records=recs,
            compute_fraction=(done / total) if total else 1.0,
            cache_bytes=cache_bytes,
            trigger=trigger,
            unavailable=dict(unavailable or {}),
            complete=complete,
            config_tag=config_tag,
            planned_steps=planned_steps,
            dry_run=dry_run,
            planned_block_speedup=planned_block_speedup,
            nonfinite_dropped=nonfinite_dropped,
            over_byte_budget=over_byte_budget,
            preset=preset,
            plan=plan,
            replans=replans,
            plan_note=plan_note,
            profile=profile,
        )

    @property
    def warnings(self) -> tuple[str, ...]:
        """What a user must hear about this run (also logged at the end of the generation).

        - a run that reused nothing (outside a dry run): the cache silently did nothing;
        - a run whose number of steps differs from the one planned before its first step;
        - a speed budget missed by more than 5 % of the requested block compute.
        """
        if not self.records:
            return ()
        out: list[str] = []
        if not self.dry_run and self.compute_fraction >= 1.0:
            why = "caching never started" if self.trigger is None else "no step was reused"
            out.append(
                f"this generation reused nothing ({why}): MixCache only added overhead. "
                "stats().table() gives the reason at every step; a speed budget "
                "(MixCacheConfig(block_speedup=...)) always reuses"
            )
        steps = len({(r.model, r.step) for r in self.records})
        if self.planned_steps is not None and steps != self.planned_steps:
            out.append(
                f"ran {steps} steps but {self.planned_steps} were planned before the first step "
                "(interrupted, or the pipeline's step count was misread): the schedule and the "
                "budget assumed the planned number"
            )
        elif self.budget_met is False:
            want = 1.0 / self.planned_block_speedup  # type: ignore[operator]
            out.append(
                f"block-compute budget x{self.planned_block_speedup:g} missed: block compute "
                f"{self.compute_fraction:.3f} vs {want:.3f} requested (more than 5 % off)"
            )
        if self.nonfinite_dropped:
            out.append(
                f"{self.nonfinite_dropped} cache entr(y/ies) held NaN/inf and were dropped "
                "(never reused): the forwards that would have used them computed"
            )
        if self.over_byte_budget:
            out.append(
                f"{self.over_byte_budget} cache entr(y/ies) were not kept: max_cache_bytes was "
                "reached (the forwards that would have used them computed)"
            )
        return tuple(out)

    @classmethod
    def merge(cls, parts: Iterable[CacheStats]) -> CacheStats:
        """Combine the stats of several transformers (Wan2.2 ``transformer``+``transformer_2``)."""
        parts = [p for p in parts if p.records]
        if not parts:
            return cls()
        if len(parts) == 1:
            return parts[0]
        records = sorted((r for p in parts for r in p.records), key=lambda r: r.step)
        by_start = sorted(parts, key=lambda p: p.records[0].step)
        unavailable: dict[str, str] = {}
        for p in parts:
            unavailable.update(p.unavailable)
        triggers = [p.trigger for p in parts if p.trigger]
        return cls.build(
            records,
            cache_bytes=sum(p.cache_bytes for p in parts),
            trigger="; ".join(triggers) or None,
            unavailable=unavailable,
            # Wan2.2: the high-noise transformer stops before the last step by design; the
            # generation is complete when the part that ran last reached the end.
            complete=max(parts, key=lambda p: p.records[-1].step).complete,
            config_tag=parts[0].config_tag,
            planned_steps=next((p.planned_steps for p in parts if p.planned_steps), None),
            dry_run=any(p.dry_run for p in parts),
            planned_block_speedup=parts[0].planned_block_speedup,
            nonfinite_dropped=sum(p.nonfinite_dropped for p in parts),
            over_byte_budget=sum(p.over_byte_budget for p in parts),
            preset=parts[0].preset,
            profile="; ".join(dict.fromkeys(p.profile for p in parts if p.profile)),
            # Each part planned its own steps, in the order they ran.
            plan="".join(p.plan for p in by_start) if all(p.plan for p in by_start) else None,
            replans=sum(p.replans for p in parts),
            plan_note=next((p.plan_note for p in parts if p.plan_note), None),
        )

    @property
    def action_counts(self) -> dict[str, int]:
        """Forwards per action."""
        counts = Counter(r.action for r in self.records)
        return {a: counts.get(a, 0) for a in ("compute", *GRANULARITIES)}

    @property
    def num_steps(self) -> int:
        return len({(r.model, r.step) for r in self.records})

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "compute_fraction": self.compute_fraction,
            "cache_bytes": self.cache_bytes,
            "trigger": self.trigger,
            "unavailable": dict(self.unavailable),
            "complete": self.complete,
            "config_tag": self.config_tag,
            "ranks": self.ranks,
            "block_speedup": self.block_speedup,
            "planned_block_speedup": self.planned_block_speedup,
            "wall_clock_speedup": self.wall_clock_speedup,
            "preset": self.preset,
            "profile": self.profile,
            "plan": self.plan,
            "replans": self.replans,
            "action_counts": self.action_counts,
            "records": [r.to_dict() for r in self.records],
        }

    def headline(self) -> str:
        """One line: preset, block-compute speedup (and budget), wall clock if measured, reuses."""
        name = self.preset or "custom config"
        parts = [f"MixCache {name}: block compute x{self.block_speedup:.2f}"]
        if self.planned_block_speedup is not None:
            verdict = {True: "met", False: "missed", None: "n/a"}[self.budget_met]
            parts[0] += f" (budget x{self.planned_block_speedup:g} {verdict})"
        if self.wall_clock_speedup is not None:
            parts.append(f"wall clock x{self.wall_clock_speedup:.2f} (measured)")
        else:
            parts.append("wall clock not measured")
        counts = self.action_counts
        reuses = ", ".join(f"{g}={counts[g]}" for g in GRANULARITIES)
        parts.append(f"reuses {reuses} of {len(self.records)} forwards")
        if self.dry_run:
            parts.append("dry run")
        return "; ".join(parts)

    def summary(self, per_step: bool = False) -> str:
        """A few lines: :meth:`headline`, when caching started, the profile, memory, what could
        not act, warnings. ``per_step=True`` puts the per-step :meth:`table` first."""
        out = [self.table(), ""] if per_step else []
        out.append(self.headline())
        started = self.trigger
        if started is None:
            # A measured plan has no trigger: caching starts at its first planned reuse.
            first = next((r.step for r in self.records if r.action != "compute"), None)
            how = "planned" if self.plan is not None else "first reuse"
            started = "never" if first is None else f"step {first} ({how})"
        out.append(f"caching started: {started}; profile: {self.profile or 'unknown'}")
        if self.plan is not None:
            again = f", re-planned {self.replans}x" if self.replans else ""
            out.append(
                f"plan: {self.plan} (C compute, s/S step, g/G cfg, b/B block; capitals "
                f"extrapolate){again}"
            )
            if self.plan_note:
                out.append(self.plan_note)
        elif self.plan_note:
            out.append(self.plan_note)
        memory = f"peak cache memory: {_human_bytes(self.cache_bytes)}"
        if self.ranks > 1:
            memory += f" per rank (sequence split over {self.ranks} ranks, each caches its shard)"
        out.append(memory)
        for g, why in self.unavailable.items():
            out.append(f"n/a {g}: {why}")
        if not self.complete:
            out.append("note: the run did not reach its last step")
        if self.dry_run:
            out.append(
                "note: dry run - every entry was refreshed at every step, so the 'would' "
                "decisions saw fresher caches than a real run would: use it to measure overhead "
                "and signals, not to tune thresholds"
            )
        for text in self.warnings:
            out.append(f"warning: {text}")
        return "\n".join(out)

    def table(self) -> str:
        """The per-step table: one row per step with the action of each branch, the blocks run
        and the reason of the step's decision."""
        branches: list[str] = []
        for r in self.records:
            if r.branch not in branches:
                branches.append(r.branch)
        rows: dict[tuple[str, int], dict[str, DecisionRecord]] = {}
        for r in self.records:
            rows.setdefault((r.model, r.step), {})[r.branch] = r
        multi_model = len({m for m, _ in rows}) > 1
        head = ["step", *branches, "blocks", "reason"]
        lines = []
        for (model, step), per in rows.items():
            cells = [f"{step}" + (f" ({model})" if multi_model else "")]
            cells += [per[b].action if b in per else "-" for b in branches]
            done = sum(r.blocks_computed for r in per.values())
            total = sum(r.blocks_total for r in per.values())
            cells.append(f"{done}/{total}")
            first = next(iter(per.values()))
            cells.append(first.reason)
            lines.append(cells)
        widths = [max(len(str(c)) for c in col) for col in zip(head, *lines, strict=False)]
        widths[-1] = 0  # reason column is not padded

        def fmt(cells: list[str]) -> str:
            return "  ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=False)).rstrip()

        out = [fmt(head), fmt(["-" * w for w in widths[:-1]] + ["------"])]
        out += [fmt(c) for c in lines]
        return "\n".join(out)

    def __str__(self) -> str:
        return self.summary()

    def __repr__(self) -> str:
        return f"CacheStats({self.headline()})"


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover
