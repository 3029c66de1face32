"""What MixCache's own work costs at a real model width, counted per operator.

Runs the ``wan-1.3b-shape`` pipeline (random Wan2.1-1.3B-shaped transformer, bf16, 1,280 latent
tokens, CFG 5) once uncached and once with a MixCache config, each under ``torch.profiler``
after a warm-up run, and prints the operators whose self CPU time differs most. Wall-clock ratios
on a shared VM drift by a percent or more between runs; operator call counts do not, so the
operators whose *count* changes are what MixCache adds, and their time is its cost.

    python scripts/profile_overhead.py --steps 8 --config dry-run
    python scripts/profile_overhead.py --steps 8 --config balanced
    python scripts/profile_overhead.py --steps 8 --config dry-run --config-first

Cost: four generations of the 1.3B-shaped model (about 13 minutes at 8 steps on 2 cores).
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from mixcache import MixCacheConfig, apply_mixcache
from mixcache_lab.bench.profiles import _random_embeds, _wan13b_pipeline


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--config", default="dry-run", help="dry-run, or a preset name")
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument(
        "--config-first",
        action="store_true",
        help="run the config before the uncached generation (a drifting clock then shows up "
        "with the opposite sign)",
    )
    args = ap.parse_args()
    pipe = _wan13b_pipeline()
    kw = dict(
        height=256, width=256, num_frames=17, num_inference_steps=args.steps, guidance_scale=5.0,
        output_type="latent", **_random_embeds("a cat walks on the beach"),
    )  # fmt: skip
    cfg = (
        MixCacheConfig.preset("balanced", dry_run=True)
        if args.config == "dry-run"
        else MixCacheConfig.preset(args.config)
    )
    res: dict[str, dict[str, tuple[int, float]]] = {}
    walls: dict[str, float] = {}
    order = ("none", args.config)
    for name in reversed(order) if args.config_first else order:
        handle = apply_mixcache(pipe, cfg) if name != "none" else None
        pipe(generator=torch.Generator().manual_seed(0), **kw)  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            start = time.perf_counter()
            pipe(generator=torch.Generator().manual_seed(0), **kw)
            walls[name] = time.perf_counter() - start
        if handle is not None:
            handle.remove()
        res[name] = {e.key: (e.count, e.self_cpu_time_total) for e in prof.key_averages()}
    base, other = res["none"], res[args.config]
    rows = []
    for key in set(base) | set(other):
        c0, t0 = base.get(key, (0, 0.0))
        c1, t1 = other.get(key, (0, 0.0))
        rows.append((t1 - t0, key, c0, c1, t0, t1))
    rows.sort(reverse=True)
    added = sum(t1 - t0 for _, _, c0, c1, t0, t1 in rows if c1 != c0) / 1e3
    print(
        f"wall: none {walls['none']:.1f} s, {args.config} {walls[args.config]:.1f} s "
        f"(ratio none/{args.config} {walls['none'] / walls[args.config]:.4f}); operators whose "
        f"call count changed: {added:+.1f} ms in all "
        f"({added / 1e3 / walls['none'] * 100:+.4f} % of the uncached run)"
    )
    for diff, key, c0, c1, t0, t1 in rows[: args.top]:
        print(
            f"{diff / 1e3:9.1f} ms  {key[:50]:50s} count {c0}->{c1}  "
            f"self {t0 / 1e3:.1f}->{t1 / 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
