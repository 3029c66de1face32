"""Does the additive error model price a streak of step reuses as it measures?

On a bundled model, one streak of ``L`` plain step reuses (``L`` = 1..5) is forced after the
compute at step ``a`` (every other step computes), for ``a`` at about 10, 30, 50 and 70 % of
the run; the measured relative L1 deviation of the final latent from the uncached run (two
tuning prompts, never benchmark ones) is printed next to the shipped error model's predicted
error of the same schedule and their ratio. A ratio that grows with ``L`` means the model prices
long streaks there lower than they measure; one that falls, higher.

    python scripts/measure_streaks.py bundled-wan --steps 20

Cost: ``2 x (1 + about 18)`` generations of the bundled model (a minute or two on 2 cores).
"""

from __future__ import annotations

import argparse

import numpy as np

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.api import run_taus
from mixcache.policy.planner import predicted_error
from mixcache.policy.signals import rel_l1
from mixcache.profiles import find_profile
from mixcache_lab.bundled import TUNING_PROMPTS, load_bundled_pipeline
from mixcache_lab.bundled.analysis import final_latent_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=["bundled-wan", "bundled-hunyuan"])
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--longest", type=int, default=5)
    args = ap.parse_args()
    n = args.steps
    pipe = load_bundled_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    prompts = TUNING_PROMPTS[2:4]

    latent = final_latent_fn(pipe, n, args.guidance)

    refs = {p: latent(p) for p in prompts}
    taus = run_taus(pipe)
    family = "wan" if args.model == "bundled-wan" else "hunyuan_video"
    profile, _, _ = find_profile(pipe.transformer, family, pipe)
    # The schedule is forced; plain reuse, no probe, no final-step rule.
    cfg = MixCacheConfig.preset(
        "paper", step_probe="none", residual_order=0, trigger_threshold=0.0, final_steps=0
    )
    handle = apply_mixcache(pipe, cfg)
    ctrl = handle._controllers["transformer"]
    print(f"{args.model}, {n} steps, CFG {args.guidance:g}, prompts {list(prompts)}")
    print("entry step (tau) | L | measured | predicted | measured / predicted")
    try:
        for a in sorted({max(2, int(f * n)) for f in (0.1, 0.3, 0.5, 0.7)}):
            for length in range(1, args.longest + 1):
                if a + length >= n - 1:
                    break
                acts = ["compute"] * n
                for t in range(a + 1, a + 1 + length):
                    acts[t] = "step"
                ctrl.force = lambda t, acts=acts: acts[t]
                errs = [rel_l1(latent(p), refs[p]) for p in prompts]
                ctrl.force = None
                done = [r.action for r in handle.stats().records if r.branch == "uncond"]
                if done != acts:
                    print(f"{a} | {length} | not executable, skipped")
                    continue
                forms = [None if x == "compute" else "plain" for x in acts]
                pred = predicted_error(profile.errors, taus, acts, forms, args.guidance)
                got = float(np.mean(errs))
                print(
                    f"{a} ({taus[a]:.3f}) | {length} | {got:.5f} | {pred:.5f} | "
                    f"{got / max(pred, 1e-12):.2f}",
                    flush=True,
                )
    finally:
        handle.remove()


if __name__ == "__main__":
    main()
