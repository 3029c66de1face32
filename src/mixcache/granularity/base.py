"""Cache entries (stored tensors plus the step they were computed at) and what every granularity
owns: its entries per branch, its drift rate, their lifetime."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from ..policy.signals import rel_l1_sums

__all__ = ["Entry", "Granularity", "ReusePlan", "extrapolate", "span_share", "to_cache"]


def span_share(span: tuple[int, int], num_blocks: int) -> float:
    """Share of a branch's block compute that skipping blocks ``[a, b)`` saves."""
    return (span[1] - span[0]) / num_blocks


def to_cache(t: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """``t`` detached and, if ``dtype`` is set and differs, cast to it (docs/method.md, Memory)."""
    t = t.detach()
    return t if dtype is None or t.dtype == dtype else t.to(dtype)


@dataclass
class Entry:
    """Stored residual(s) of one granularity for one branch.

    ``hidden`` is always present; ``encoder`` only where the reused span ends before the last
    block of a model whose blocks also update encoder states (HunyuanVideo). ``step`` is when it
    was computed (joint scheduling: entries carry their age); ``span`` the blocks it covers.
    """

    hidden: torch.Tensor
    step: int
    span: tuple[int, int] = (0, 0)
    encoder: torch.Tensor | None = None

    @property
    def nbytes(self) -> int:
        n = self.hidden.numel() * self.hidden.element_size()
        if self.encoder is not None:
            n += self.encoder.numel() * self.encoder.element_size()
        return n


def extrapolate(
    entry: Entry,
    prev: Entry | None,
    step: int,
    dtype: torch.dtype | None = None,
    coord: Sequence[float] | None = None,
) -> Entry | torch.Tensor:
    """The entry predicted linearly from the last two computed ones ([ours], residual_order=1).

    R(step) = R1 + (R1 - R0) * (step - s1) / (s1 - s0), in step indices — or, with ``coord``
    (the normalised time of every step, from the planner), in that coordinate:
    ``(c[step] - c[s1]) / (c[s1] - c[s0])``; the same for every
    granularity (the stack residual, the span residual with its encoder part, the guidance
    difference). With one entry (a reuse right after the first compute, which only a forced
    reuse can cause: the signals need two computed steps) it is plain reuse. Entries of one
    slot always share a shape. The line is one fused ``torch.lerp`` (no temporary besides its
    result) in ``dtype``, the dtype of the hidden states the entry came from: a cache in the
    model's own precision is extrapolated in it (a bf16 model's bf16 cache makes no float32
    hidden-size copies; lerp rounds once), a lower-precision cache (``cache_dtype`` below the
    model's) in the model's. Without ``dtype``, at least float32. The result is a fresh
    tensor, never a stored one (the caller may consume it in place). Returns a tensor, or an
    :class:`Entry` when the entry also carries an encoder residual.
    """
    if prev is None or prev.step >= entry.step:
        return entry
    if coord is not None:
        k = (coord[step] - coord[entry.step]) / (coord[entry.step] - coord[prev.step])
    else:
        k = (step - entry.step) / (entry.step - prev.step)

    def line(old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
        to = dtype if dtype is not None else torch.promote_types(new.dtype, torch.float32)
        return torch.lerp(old.to(to), new.to(to), 1.0 + k)

    hidden = line(prev.hidden, entry.hidden)
    if entry.encoder is None:
        return hidden
    encoder = entry.encoder if prev.encoder is None else line(prev.encoder, entry.encoder)
    return Entry(hidden, step, entry.span, encoder)


@dataclass(frozen=True)
class ReusePlan:
    """How one forward reuses: blocks ``[skip[0], skip[1])`` are not run and ``residual`` is added
    to the hidden state entering ``skip[0]`` — or, with ``output`` set, the whole forward is
    replaced by it (cfg reuse at model-output level)."""

    skip: tuple[int, int]
    residual: Entry | torch.Tensor | None = None
    output: torch.Tensor | None = None
    #: ``residual`` was built for this reuse (an extrapolation), not a stored entry: the
    #: controller may add the hidden state into it in place instead of allocating a sum.
    fresh: bool = False


class Granularity:
    """What every granularity owns: its cache entries, its drift, and their lifetime.

    Entries are kept per (branch, slot); a slot names one stored quantity of the granularity
    (``"step"``, ``"span"``, ``"delta"`` and ``"delta_out"``; with ``residual_order=1`` each also
    keeps the one before as ``"<slot>_prev"``, and a reuse extrapolates through the two).
    ``rate`` is the entry's relative drift per step, measured when a fresh entry replaces an
    older one; a granularity's signal D^ψ is that rate times the entry's age. Subclasses add
    ``saving`` (the share of a step's block compute a reuse saves), ``plan`` (a
    :class:`ReusePlan`, or None without a usable entry) and their own capture method. The
    controller decides when each is called; none of them decides anything.

    Drift measurements go through ``pending`` (one reduction per forward) to ``on_drift(name,
    value)``, the controller's adaptive-interval hook.

    Capture only while needed: :attr:`wanted` says whether the controller captures this
    granularity's entries in the current step. The controller sets it at the start of every step
    (:meth:`Controller.refresh_wanted`): False when the granularity is not in the config, when
    it cannot act in this run (cfg without a second branch) or when no step is left where it
    may act (the final steps), and False whenever :attr:`active` is. :meth:`set_active` is the
    one switch a planner uses to take a granularity out of a run (its entries are then never
    captured: no subtraction, no drift sum, no bytes held); it holds until :meth:`reset`.
    """

    name: str = ""

    def __init__(
        self,
        pending: Any,
        cache_dtype: torch.dtype | None,
        on_drift: Callable[[str, float, int], None] | None = None,
        residual_order: int = 0,
    ) -> None:
        self._pending = pending
        self._dtype = cache_dtype
        self._on_drift = on_drift
        self._order = residual_order
        # The planner's form for the current forward: (order, coordinate) or None (config's).
        self._form: tuple[int, Sequence[float] | None] | None = None
        self._slots: dict[tuple[str, str], Entry] = {}
        self.rate: float | None = None
        self.active = True  # a planner's say for the run (set_active)
        self.wanted = True  # capture entries in this step (set by the controller)
        # sum|value| of the last tracked store (the drift's denominator): non-finite iff the
        # stored value holds a NaN/inf, so the controller's finite check reuses it.
        self.last_abs_sum: torch.Tensor | None = None
        self.last_stored: Entry | None = None  # the entry last_abs_sum belongs to
        # dtype of the hidden states the entries come from (what an extrapolation runs in).
        self._source_dtype: torch.dtype | None = None

    # -- entries
    def get(self, branch: str, slot: str) -> Entry | None:
        return self._slots.get((branch, slot))

    def put(self, branch: str, slot: str, entry: Entry | None) -> None:
        if entry is None:
            self._slots.pop((branch, slot), None)
        else:
            self._slots[(branch, slot)] = entry

    def discard(self, entry: Entry) -> list[str]:
        """Forget ``entry`` wherever it is kept; returns the slots it was in."""
        keys = [k for k, e in self._slots.items() if e is entry]
        for k in keys:
            del self._slots[k]
        return [slot for _, slot in keys]

    def take_prev(self, branch: str, slot: str, like: torch.Tensor) -> torch.Tensor | None:
        """Take the tensor of the (branch, ``"<slot>_prev"``) entry out of the cache, to be
        overwritten: the next store of ``slot`` would discard it anyway (``residual_order=1``
        keeps one entry before). Returns None (and takes nothing) unless it can hold ``like``
        exactly: same shape, dtype and device, no encoder part, and nothing needs a gradient.

        Why: a full compute must hold the hidden state entering the span until the span's end
        to take the residual; held as the model's own tensor it is one hidden-size tensor
        above the uncached run's peak, copied into the buffer about to be freed it is not, and
        the residual is then written into that buffer instead of a new allocation.
        """
        if self._order != 1:
            return None
        prev = self.get(branch, slot + "_prev")
        if prev is None or prev.encoder is not None:
            return None
        t = prev.hidden
        if (
            t.shape != like.shape
            or t.dtype != like.dtype
            or t.device != like.device
            or like.requires_grad
        ):
            return None
        self.put(branch, slot + "_prev", None)
        return t

    def entries(self) -> list[Entry]:
        return list(self._slots.values())

    def tensors(self) -> list[torch.Tensor]:
        """Other tensors it holds besides its entries (counted in the held bytes)."""
        return []

    @property
    def nbytes(self) -> int:
        """Bytes of its entries (what ``max_cache_bytes`` bounds)."""
        return sum(e.nbytes for e in self._slots.values())

    def reset(self) -> None:
        """End of a generation: every entry (:meth:`release`) and measurement is dropped."""
        self.release()
        self.rate = None
        self.active = self.wanted = True
        self._form = None

    def release(self) -> None:
        """Free every entry, keeping the run's measurements (the final steps: nothing later can
        reuse what is held, so it is not kept through them and the pipeline's decode)."""
        self._slots.clear()
        self.last_abs_sum = self.last_stored = None

    def set_active(self, active: bool) -> None:
        """Whether this granularity may still be chosen in this run (True after :meth:`reset`).

        A planner that leaves a granularity out of its plan calls ``set_active(False)``: from
        the next step its entries are not captured (:attr:`wanted` is False) and, without an
        entry, it cannot be chosen. ``set_active(True)`` captures again from the next step.
        """
        self.active = bool(active)

    def use_form(self, order: int | None, coord: Sequence[float] | None = None) -> None:
        """How the next reuse reads its entry (set by the controller from the run's plan):
        ``0`` the entry as it is, ``1`` the line through the last two entries (in ``coord``
        when given, else in step indices); ``None`` returns to ``residual_order``. The entry
        before is kept only with ``residual_order=1``, so ``1`` needs that."""
        self._form = None if order is None else (order, coord)

    # -- what each granularity says for itself
    def entry(self, branch: str) -> Entry | None:
        """The entry a reuse of ``branch`` would use (None: none yet)."""
        raise NotImplementedError  # pragma: no cover - interface

    def saving(self, n_branches: int) -> float:
        """Share of one step's block compute (all ``n_branches`` branches) a reuse saves."""
        raise NotImplementedError  # pragma: no cover - interface

    def plan(self, branch: str, step: int) -> ReusePlan | None:
        """How a reuse of ``branch`` at ``step`` runs; None without a usable entry."""
        raise NotImplementedError  # pragma: no cover - interface

    def signal(self, made: int | None, step: int) -> float | None:
        """D^ψ: drift rate × age of the entry made at step ``made`` (None: not measurable)."""
        if made is None or self.rate is None:
            return None
        return self.rate * (step - made)

    def _store(
        self, branch: str, slot: str, value: torch.Tensor, step: int, track: bool, **fields: Any
    ) -> Entry:
        """Keep ``value`` as the (branch, slot) entry made at ``step``; with ``track``, queue the
        drift of the entry it replaces (if any) for :attr:`rate`."""
        self._source_dtype = value.dtype
        new = Entry(to_cache(value, self._dtype), step, **fields)
        old = self.get(branch, slot)
        self.last_abs_sum = None
        if track and old is not None:
            age = step - old.step
            sums = rel_l1_sums(old.hidden, new.hidden)
            self.last_abs_sum = sums[1]
            self._pending.add(sums, lambda v: self._drifted(v, age))
        self.put(branch, slot, new)
        self.last_stored = new
        return new

    def _store_line(
        self,
        branch: str,
        slot: str,
        value: torch.Tensor,
        step: int,
        track: bool,
        keep_prev: bool = True,
        **fields: Any,
    ) -> Entry:
        """:meth:`_store`, and with ``residual_order=1`` keep the entry it replaces as
        ``"<slot>_prev"`` (none when ``keep_prev`` is False: the two would not lie on one line)."""
        old = self.get(branch, slot)
        new = self._store(branch, slot, value, step, track, **fields)
        if self._order == 1:
            self.put(branch, slot + "_prev", old if keep_prev else None)
        return new

    def _at(self, branch: str, slot: str, step: int) -> Entry | torch.Tensor | None:
        """What a reuse of the (branch, slot) entry at ``step`` adds: the entry, or with
        ``residual_order=1`` its line through the previous one (:func:`extrapolate`)."""
        entry = self.get(branch, slot)
        order, coord = self._form if self._form is not None else (self._order, None)
        if entry is None or order != 1:
            return entry
        return extrapolate(entry, self.get(branch, slot + "_prev"), step, self._source_dtype, coord)

    def _drifted(self, value: float, age: int) -> None:
        if not math.isfinite(value):
            return  # a non-finite entry (dropped by the controller's guard) says nothing
        self.rate = value / max(age, 1)
        if self._on_drift is not None:
            self._on_drift(self.name, value, age)
