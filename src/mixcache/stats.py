"""What MixCache did during a generation: one record per transformer forward, and totals."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from .profiles import GRANULARITIES

__all__ = ["CacheStats", "DecisionRecord"]


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


@dataclass(frozen=True)
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
        plan: the measured plan made before the run (``config.planner="measured"``), one letter
            a step (:meth:`mixcache.policy.planner.Plan.code`); None when no plan was made.
        replans: how many times the run re-planned (a planned reuse was impossible).
        plan_note: why no plan was made (the budget was then priced step by step).
        profile: which impact profile was used, and what it was measured on.
    """

    records: tuple[DecisionRecord, ...] = ()
    compute_fraction: float = 1.0
    cache_bytes: int = 0
    trigger: str | None = None
    unavailable: Mapping[str, str] = field(default_factory=dict)
    complete: bool = True
    config_tag: str = ""
    ranks: int = 1
    planned_steps: int | None = None
    dry_run: bool = False
    target_speedup: float | None = None
    nonfinite_dropped: int = 0
    over_byte_budget: int = 0
    plan: str | None = None
    replans: int = 0
    plan_note: str | None = None
    profile: str | None = None

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
        target_speedup: float | None = None,
        nonfinite_dropped: int = 0,
        over_byte_budget: int = 0,
        plan: str | None = None,
        replans: int = 0,
        plan_note: str | None = None,
        profile: str | None = None,
    ) -> CacheStats:
        recs = tuple(records)
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
            target_speedup=target_speedup,
            nonfinite_dropped=nonfinite_dropped,
            over_byte_budget=over_byte_budget,
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
                "stats().summary() gives the reason at every step; a speed budget "
                "(MixCacheConfig(target_speedup=...)) always reuses"
            )
        steps = len({(r.model, r.step) for r in self.records})
        if self.planned_steps is not None and steps != self.planned_steps:
            out.append(
                f"ran {steps} steps but {self.planned_steps} were planned before the first step "
                "(interrupted, or the pipeline's step count was misread): the schedule and the "
                "budget assumed the planned number"
            )
        elif self.target_speedup is not None and not self.dry_run:
            want = 1.0 / self.target_speedup
            if abs(self.compute_fraction - want) > 0.05 * want + 1e-9:
                out.append(
                    f"speed budget x{self.target_speedup:g} missed: block compute "
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
            target_speedup=parts[0].target_speedup,
            nonfinite_dropped=sum(p.nonfinite_dropped for p in parts),
            over_byte_budget=sum(p.over_byte_budget for p in parts),
            plan_note=next((p.plan_note for p in parts if p.plan_note), None),
            profile=parts[0].profile,
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
            "action_counts": self.action_counts,
            "records": [r.to_dict() for r in self.records],
        }

    def summary(self) -> str:
        """A human-readable table: one row per step with the action of each branch, then totals."""
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
        counts = ", ".join(f"{a}={n}" for a, n in self.action_counts.items())
        out.append("")
        out.append(
            f"compute fraction {self.compute_fraction:.3f} "
            f"(ideal speedup {1 / max(self.compute_fraction, 1e-9):.2f}x); forwards: {counts}"
        )
        out.append(f"caching started: {self.trigger or 'never'}")
        if self.plan is not None:
            again = f", re-planned {self.replans}x" if self.replans else ""
            out.append(f"plan: {self.plan} (C compute, s/S step, g/G cfg, b/B block; capitals extrapolate){again}")
        elif self.plan_note:
            out.append(self.plan_note)
        if self.profile:
            out.append(f"profile: {self.profile}")
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


def _human_bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{n} B"  # pragma: no cover
