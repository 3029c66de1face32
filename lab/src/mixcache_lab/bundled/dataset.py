"""Procedural text-to-video dataset for the bundled model.

Each clip shows one shape (circle, square, triangle) of one of six colours moving left, right,
up or down over a plain dark background, with the caption "a <colour> <shape> moving <direction>".
Everything is a pure function of ``(prompt, seed)``: no files, no global random state.

The prompt space (6 x 3 x 4 = 72 prompts) is split into training prompts and held-out prompts.
The held-out prompts are unseen *combinations*: every (colour, shape), (colour, direction) and
(shape, direction) pair of a held-out prompt still occurs in training, so the held-out set
measures compositional generalisation, not whether the model has seen a word. Seeds are split
too: training draws seeds below ``HELDOUT_SEED_BASE``; evaluation uses seeds from it upwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# Colour name -> RGB in [0, 1]. Hues are far apart so that a clip's colour is unambiguous.
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (0.95, 0.15, 0.15),
    "green": (0.15, 0.85, 0.2),
    "blue": (0.2, 0.35, 1.0),
    "yellow": (0.95, 0.9, 0.1),
    "cyan": (0.1, 0.9, 0.95),
    "magenta": (0.95, 0.2, 0.9),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
DIRECTIONS: tuple[str, ...] = ("left", "right", "up", "down")
# Unit motion per direction in (dx, dy) image coordinates (y grows downwards).
DIRECTION_VECTORS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
}
BACKGROUND: tuple[float, float, float] = (0.06, 0.06, 0.08)

# Words the tokenizer knows (besides the special tokens). Order is part of the shipped model.
VOCABULARY: tuple[str, ...] = ("a", *COLORS, *SHAPES, "moving", *DIRECTIONS)

NUM_FRAMES = 9
HEIGHT = 32
WIDTH = 32
# Seeds at or above this value are never used for training.
HELDOUT_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class Scene:
    """One parsed caption: what a clip must show."""

    color: str
    shape: str
    direction: str

    @property
    def prompt(self) -> str:
        """The canonical caption of this scene."""
        return caption(self.color, self.shape, self.direction)


def caption(color: str, shape: str, direction: str) -> str:
    """Return the canonical caption, e.g. ``"a red circle moving left"``."""
    return f"a {color} {shape} moving {direction}"


ALL_SCENES: tuple[Scene, ...] = tuple(
    Scene(c, s, d) for c in COLORS for s in SHAPES for d in DIRECTIONS
)


def _heldout_scenes() -> tuple[Scene, ...]:
    # One direction per (colour, shape) pair, rotating with both indices, so that a held-out
    # triple never removes all training examples of any pair of its attributes.
    colors = list(COLORS)
    out = []
    for ci, c in enumerate(colors):
        for si, s in enumerate(SHAPES):
            if (ci, si) in ((2, 2), (5, 0)):  # keep 16 held-out prompts, not 18
                continue
            out.append(Scene(c, s, DIRECTIONS[(ci + si) % 4]))
    return tuple(out)


HELDOUT_SCENES: tuple[Scene, ...] = _heldout_scenes()
TRAIN_SCENES: tuple[Scene, ...] = tuple(s for s in ALL_SCENES if s not in set(HELDOUT_SCENES))
TRAIN_PROMPTS: tuple[str, ...] = tuple(s.prompt for s in TRAIN_SCENES)
HELDOUT_PROMPTS: tuple[str, ...] = tuple(s.prompt for s in HELDOUT_SCENES)
# Two disjoint halves of the held-out prompts: one to tune cache settings on, one to report on.
TUNING_PROMPTS: tuple[str, ...] = HELDOUT_PROMPTS[0::2]
BENCH_PROMPTS: tuple[str, ...] = HELDOUT_PROMPTS[1::2]


class UnknownPromptError(ValueError):
    """A prompt that the bundled model's vocabulary cannot express."""


def parse_prompt(prompt: str) -> Scene:
    """Parse a caption into a :class:`Scene`.

    Accepts the canonical form and small variations (case, extra spaces, a missing "a" or
    "moving"). Raises :class:`UnknownPromptError` naming any unknown word and listing the
    vocabulary.
    """
    words = re.findall(r"[a-z]+", prompt.lower())
    unknown = [w for w in words if w not in VOCABULARY]
    if unknown:
        raise UnknownPromptError(
            f"unknown word(s) {unknown} in prompt {prompt!r}; the bundled model knows: "
            f"colours {list(COLORS)}, shapes {list(SHAPES)}, directions {list(DIRECTIONS)} "
            f'(e.g. "a red circle moving left")'
        )
    found = {
        "color": [w for w in words if w in COLORS],
        "shape": [w for w in words if w in SHAPES],
        "direction": [w for w in words if w in DIRECTIONS],
    }
    for key, vals in found.items():
        if len(vals) != 1:
            raise UnknownPromptError(
                f"prompt {prompt!r} must name exactly one {key}, found {vals}; "
                f'use the form "a <colour> <shape> moving <direction>"'
            )
    return Scene(found["color"][0], found["shape"][0], found["direction"][0])


def _shape_mask(
    shape: str, cx: float, cy: float, r: float, height: int, width: int, ss: int = 4
) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape centred at (cx, cy) with half-size r."""
    # Supersample each pixel ss x ss times; coverage = fraction of sub-samples inside.
    off = (np.arange(ss) + 0.5) / ss
    ys = (np.arange(height)[:, None] + off[None, :]).reshape(-1)
    xs = (np.arange(width)[:, None] + off[None, :]).reshape(-1)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        inside = dx * dx + dy * dy <= r * r
    elif shape == "square":
        # Same area as the circle would be too small to tell apart; use the full box.
        inside = (np.abs(dx) <= r) & (np.abs(dy) <= r)
    elif shape == "triangle":
        # Apex up, base down, spanning the same 2r x 2r box: |dx| <= r * (dy + r) / (2r).
        inside = (dy >= -r) & (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    cov = inside.reshape(height, ss, width, ss).mean(axis=(1, 3))
    return cov.astype(np.float32)


def render_clip(
    scene: Scene | str,
    seed: int,
    num_frames: int = NUM_FRAMES,
    height: int = HEIGHT,
    width: int = WIDTH,
) -> np.ndarray:
    """Render one clip deterministically.

    Returns a float32 array of shape (num_frames, height, width, 3) in [0, 1]. The shape's size,
    start position and speed are drawn from ``numpy.random.default_rng(seed)``; the shape stays
    fully inside the frame for the whole clip.
    """
    if isinstance(scene, str):
        scene = parse_prompt(scene)
    rng = np.random.default_rng(seed)
    size = min(height, width)
    r = float(rng.uniform(0.19, 0.23) * size)  # half-size: a 12-15 px shape in a 32 px frame
    speed = float(rng.uniform(1.2, 1.6) * size / 32.0)  # px per frame
    travel = speed * (num_frames - 1)
    margin = r + 1.0
    dx, dy = DIRECTION_VECTORS[scene.direction]
    # Along the motion axis, start where the whole path fits; across it, anywhere that fits.
    if dx != 0:
        lo, hi = margin, width - margin - travel
        x0 = float(rng.uniform(lo, max(lo, hi)))
        cx0 = x0 if dx > 0 else width - x0
        cy0 = float(rng.uniform(margin, height - margin))
    else:
        lo, hi = margin, height - margin - travel
        y0 = float(rng.uniform(lo, max(lo, hi)))
        cy0 = y0 if dy > 0 else height - y0
        cx0 = float(rng.uniform(margin, width - margin))
    color = np.asarray(COLORS[scene.color], dtype=np.float32)
    bg = np.asarray(BACKGROUND, dtype=np.float32)
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    for f in range(num_frames):
        cov = _shape_mask(scene.shape, cx0 + dx * speed * f, cy0 + dy * speed * f, r, height, width)
        frames[f] = bg + cov[..., None] * (color - bg)
    return frames


def training_spec(index: int, base_seed: int = 0) -> tuple[Scene, int]:
    """Scene and clip seed of the ``index``-th training example of the stream ``base_seed``.

    Derived from ``(base_seed, index)`` only, so any example can be regenerated on its own
    (which makes resumed training see the same data). Seeds stay below ``HELDOUT_SEED_BASE``.
    """
    rng = np.random.default_rng([base_seed, index])
    scene = TRAIN_SCENES[int(rng.integers(len(TRAIN_SCENES)))]
    return scene, int(rng.integers(HELDOUT_SEED_BASE))


def training_example(index: int, base_seed: int = 0) -> tuple[str, np.ndarray]:
    """The ``index``-th training example: (caption, clip) as in :func:`training_spec`."""
    scene, seed = training_spec(index, base_seed)
    return scene.prompt, render_clip(scene, seed)


def heldout_seed(i: int) -> int:
    """The i-th evaluation seed (never used in training)."""
    return HELDOUT_SEED_BASE + i
