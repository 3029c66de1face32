"""Deterministic prompt-adherence evaluator for clips of the bundled dataset's kind.

:func:`read_clip` tells a clip's colour, shape and direction from its pixels alone:
- foreground = pixels far from the background colour (the median of the border pixels);
- colour = nearest palette colour to the mean foreground colour;
- the object = in each frame, the largest 8-connected foreground component: stray speckles a
  generator leaves around the object would otherwise stretch its bounding box and move its
  centroid (a clip with one clean object reads the same either way);
- shape = the template (square, inscribed circle, apex-up triangle) fitted to the object's
  bounding box with the best IoU, by majority over frames; the fill ratio
  (object area / bounding-box area: 1.0, 0.79, 0.5 ideally) is reported too;
- direction = sign of the dominant axis of the object centroid's displacement from the first
  frames to the last ones.
No learned parts, no randomness: the same clip always gives the same reading.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .dataset import COLORS, SHAPES, Scene, parse_prompt

# A pixel is foreground when some channel differs from the background by more than this.
FG_THRESHOLD = 0.35
# Frames whose foreground is smaller than this many pixels are ignored for shape and motion.
MIN_FG_PIXELS = 6


@dataclass(frozen=True)
class ClipReading:
    """What :func:`read_clip` saw in a clip. Attributes are ``None`` when nothing was found."""

    color: str | None
    shape: str | None
    direction: str | None
    fill_ratio: float | None
    displacement: tuple[float, float] | None  # (dx, dy) of the centroid, in pixels
    fg_fraction: float  # mean fraction of foreground pixels per frame
    trajectory: list[tuple[float, float]] = field(default_factory=list)  # per-frame centroids


def _templates(h: int, w: int) -> dict[str, np.ndarray]:
    """Boolean masks of each shape filling an h x w box (pixel centres)."""
    yy, xx = np.meshgrid((np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w, indexing="ij")
    return {
        "square": np.ones((h, w), dtype=bool),
        "circle": (xx - 0.5) ** 2 + (yy - 0.5) ** 2 <= 0.25,
        "triangle": np.abs(xx - 0.5) <= yy / 2.0,
    }


_EIGHT_NEIGHBOURS = np.ones((3, 3), dtype=bool)


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of a boolean mask (all False if the mask is empty)."""
    labels, n = ndimage.label(mask, structure=_EIGHT_NEIGHBOURS)
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == 1 + int(np.argmax(sizes))


def read_clip(clip: np.ndarray) -> ClipReading:
    """Read colour, shape and direction from a clip (F, H, W, 3) with values in [0, 1]."""
    clip = np.asarray(clip, dtype=np.float32)
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"expected a clip of shape (F, H, W, 3), got {clip.shape}")
    f, h, w, _ = clip.shape
    edges = (clip[:, 0], clip[:, -1], clip[:, :, 0], clip[:, :, -1])
    border = np.concatenate([e.reshape(-1, 3) for e in edges])
    bg = np.median(border, axis=0)
    dist = np.abs(clip - bg).max(axis=-1)  # (F, H, W)
    fg = dist > FG_THRESHOLD
    fg_fraction = float(fg.mean())
    if fg.sum() < MIN_FG_PIXELS:
        return ClipReading(None, None, None, None, None, fg_fraction)

    # Colour: mean of confidently-foreground pixels (the anti-aliased rim mixes in background).
    core = dist > max(FG_THRESHOLD, 0.6 * float(dist[fg].max()))
    mean_rgb = clip[core].mean(axis=0)
    names = list(COLORS)
    palette = np.asarray([COLORS[n] for n in names], dtype=np.float32)
    color = names[int(np.argmin(((palette - mean_rgb) ** 2).sum(axis=1)))]

    shape_votes: dict[str, float] = dict.fromkeys(SHAPES, 0.0)
    fills: list[float] = []
    centroids: list[tuple[float, float]] = []
    frames_used: list[int] = []
    ys, xs = np.mgrid[0:h, 0:w]
    for i in range(f):
        m = _largest_component(fg[i])
        n = int(m.sum())
        if n < MIN_FG_PIXELS:
            continue
        rows, cols = np.nonzero(m.any(axis=1))[0], np.nonzero(m.any(axis=0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        box = m[y0:y1, x0:x1]
        fills.append(n / box.size)
        for name, tmpl in _templates(y1 - y0, x1 - x0).items():
            inter = np.logical_and(box, tmpl).sum()
            union = np.logical_or(box, tmpl).sum()
            shape_votes[name] += float(inter / max(union, 1))
        centroids.append((float(xs[m].mean()), float(ys[m].mean())))
        frames_used.append(i)
    if not centroids:
        return ClipReading(color, None, None, None, None, fg_fraction)
    shape = max(SHAPES, key=lambda s: shape_votes[s])
    fill_ratio = float(np.median(fills))

    direction = None
    displacement = None
    if len(centroids) >= 2:
        k = max(1, len(centroids) // 3)
        c = np.asarray(centroids)
        dx, dy = (c[-k:].mean(axis=0) - c[:k].mean(axis=0)).tolist()
        displacement = (float(dx), float(dy))
        if abs(dx) >= abs(dy):
            direction = "right" if dx > 0 else "left"
        else:
            direction = "down" if dy > 0 else "up"
    return ClipReading(color, shape, direction, fill_ratio, displacement, fg_fraction, centroids)


@dataclass(frozen=True)
class Adherence:
    """Per-attribute and all-correct accuracy over a set of clips."""

    n: int
    color: float
    shape: float
    direction: float
    all_correct: float

    def as_dict(self) -> dict[str, float]:
        """Plain dict (for JSON)."""
        return {
            "n": self.n,
            "color": self.color,
            "shape": self.shape,
            "direction": self.direction,
            "all_correct": self.all_correct,
        }


def judge(prompt: str | Scene, clip: np.ndarray) -> dict[str, bool]:
    """Which attributes of ``prompt`` the clip shows: keys color, shape, direction, all."""
    scene = parse_prompt(prompt) if isinstance(prompt, str) else prompt
    r = read_clip(clip)
    ok = {
        "color": r.color == scene.color,
        "shape": r.shape == scene.shape,
        "direction": r.direction == scene.direction,
    }
    ok["all"] = all(ok.values())
    return ok


def adherence(prompts: Sequence[str | Scene], clips: Iterable[np.ndarray]) -> Adherence:
    """Accuracy of ``clips`` against their ``prompts`` (paired in order)."""
    results = [judge(p, c) for p, c in zip(prompts, clips, strict=True)]
    n = len(results)
    if n == 0:
        raise ValueError("no clips to evaluate")

    def frac(key: str) -> float:
        return sum(r[key] for r in results) / n

    return Adherence(n, frac("color"), frac("shape"), frac("direction"), frac("all"))


def ground_truth_adherence(prompts: Sequence[str], seeds: int = 2) -> Adherence:
    """Evaluator accuracy on rendered (ground-truth) clips of ``prompts``, held-out seeds."""
    from .dataset import heldout_seed, render_clip

    pairs = [(p, heldout_seed(k)) for p in prompts for k in range(seeds)]
    return adherence([p for p, _ in pairs], (render_clip(p, s) for p, s in pairs))


def generated_adherence(
    pipe: Any,
    prompts: Sequence[str],
    seeds: int = 2,
    steps: int = 50,
    guidance: float | None = None,
    batch_size: int = 16,
) -> Adherence:
    """Accuracy of the pipeline's generations of ``prompts`` (``seeds`` held-out seeds each).

    Generation k of a prompt uses ``torch.Generator().manual_seed(heldout_seed(k))``; clips are
    generated in batches of ``batch_size`` (one generator per clip, so a clip's noise does not
    depend on the batching).
    """
    import torch

    from .dataset import heldout_seed
    from .pipeline import cfg_call_kwargs

    pairs = [(p, heldout_seed(k)) for p in prompts for k in range(seeds)]
    clips: list[np.ndarray] = []
    for i in range(0, len(pairs), batch_size):
        chunk = pairs[i : i + batch_size]
        kwargs: dict[str, Any] = {
            "num_inference_steps": steps,
            "generator": [torch.Generator().manual_seed(s) for _, s in chunk],
            "output_type": "np",
        }
        if guidance is not None:
            kwargs.update(cfg_call_kwargs(pipe, guidance))
        clips.extend(pipe([p for p, _ in chunk], **kwargs).frames)
    return adherence([p for p, _ in pairs], clips)
