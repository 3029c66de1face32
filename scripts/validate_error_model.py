"""How well the shipped error model predicts the real final error of whole schedules.

Random schedules (first and last two steps computed, a share of the steps reused by step, cfg
or block, plain or linear) are forced through the controller on a bundled model, and the
model's predicted final error is compared with the measured relative L1 deviation of the final
latent from the uncached run, on tuning prompts the calibration did not use. Prints the Spearman
rank correlation and the ratio measured / predicted.

    python scripts/validate_error_model.py bundled-wan --steps 20 --schedules 40

``--computes K`` replaces the random schedules by every step-only plain schedule with ``K``
computes (the first and the last step among them) and also prints the best five by measured and
by predicted error: whether the model ranks the few schedules a low step count allows.

    python scripts/validate_error_model.py bundled-wan --steps 10 --computes 4 --guidance 4

``--profile PATH`` predicts with another profile (e.g. one calibrated with
``calibrate_errors(..., size_steps=None)`` and saved with ``profile_from_errors``, to compare
without the size exponent the shipped profiles carry: docs/bench/tuning/r21-size-adopted.md).
``--last-reuse`` makes the exhaustive schedules reuse the last step instead of computing it
(docs/bench/tuning/r19-last-step.md).

``--codes`` forces the schedules given, one letter a step as ``mixcache plan`` prints them
(e.g. ``CgsssCssCC,CCsssCssCC``), and prints each one's measured and predicted error.

``--prompts START:STOP`` measures on other tuning prompts than 2 and 3 (the two the default
calibration does not run); with ``--codes`` each prompt's error is printed too
(docs/bench/tuning/r23-four-prompts.md: how far prompts differ).

``--path-aware`` predicts with the model's gain curve (streaks of step reuses priced where they
end, ``planner.predicted_error(path_aware=True)``) instead of adding the errors as measured.
"""

from __future__ import annotations

import argparse
import itertools
import random

import numpy as np

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.api import run_taus
from mixcache.policy.planner import predicted_error
from mixcache.policy.signals import rel_l1
from mixcache.profiles import ImpactProfile, find_profile
from mixcache_lab.bundled import TUNING_PROMPTS, load_bundled_pipeline
from mixcache_lab.bundled.analysis import final_latent_fn


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", default="bundled-wan", nargs="?")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--schedules", type=int, default=40)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--computes", type=int, default=None, help="exhaustive, K computes")
    ap.add_argument("--path-aware", action="store_true", help="predict with the gain curve")
    ap.add_argument(
        "--prompts",
        default="2:4",
        help="tuning prompts to measure on, as a slice START:STOP (default 2:4: the two the "
        "default calibration does not run); --codes then also prints each prompt's error",
    )
    ap.add_argument("--profile", default=None, help="profile JSON to predict with")
    ap.add_argument("--last-reuse", action="store_true", help="--computes: reuse the last step")
    ap.add_argument(
        "--codes",
        default=None,
        help="comma-separated schedules to force, one letter a step as `mixcache plan` prints "
        "them (C compute, s/S step, g/G cfg, b/B block; capitals extrapolate)",
    )
    args = ap.parse_args()
    pipe = load_bundled_pipeline(args.model)
    pipe.set_progress_bar_config(disable=True)
    try:
        lo, hi = (int(x) for x in args.prompts.split(":"))
    except ValueError:
        ap.error(f"--prompts: {args.prompts!r} is not START:STOP")
    prompts = TUNING_PROMPTS[lo:hi]
    if not prompts:
        ap.error(f"--prompts {args.prompts} selects none of the {len(TUNING_PROMPTS)} prompts")
    n = args.steps

    latent = final_latent_fn(pipe, n, args.guidance)

    refs = {p: latent(p) for p in prompts}
    taus = run_taus(pipe)
    if args.profile is not None:
        profile = ImpactProfile.load(args.profile)
    else:
        profile, _, _ = find_profile(
            pipe.transformer, "wan" if "wan" in args.model else "hunyuan_video", pipe
        )
    rng = random.Random(args.seed)
    # The presets' forms (no probe, entries kept for extrapolation); the schedule is forced.
    cfg = MixCacheConfig.preset(
        "paper", step_probe="none", residual_order=1, trigger_threshold=0.0, final_steps=0
    )
    handle = apply_mixcache(pipe, cfg)
    ctrl = handle._controllers["transformer"]
    predicted, measured, codes, per_prompt = [], [], [], []
    skipped = 0

    def random_schedule() -> tuple[list[str], list[str | None]]:
        share = rng.uniform(0.3, 0.7)
        acts: list[str] = ["compute", "compute"]
        for _t in range(2, n - 2):
            if rng.random() < share and sum(a != "compute" for a in acts[-5:]) < 5:
                acts.append(rng.choice(["step", "step", "cfg", "block"]))
            else:
                acts.append("compute")
        acts += ["compute", "compute"]
        return acts, [None if a == "compute" else rng.choice(["plain", "linear"]) for a in acts]

    letters = {"C": "compute", "s": "step", "g": "cfg", "b": "block"}
    if args.codes is not None:
        schedules = []
        for code in args.codes.split(","):
            if len(code) != n or any(ch.lower() not in "csgb" for ch in code):
                ap.error(f"--codes: {code!r} is not {n} letters of C, s/S, g/G, b/B")
            acts = [letters["C" if ch == "C" else ch.lower()] for ch in code]
            forms = [None if ch == "C" else ("linear" if ch.isupper() else "plain") for ch in code]
            schedules.append((acts, forms))
    elif args.computes is None:
        schedules = [random_schedule() for _ in range(args.schedules)]
    else:
        if not 2 <= args.computes <= n:
            ap.error(f"--computes must be in 2..{n}")
        schedules = []
        last = () if args.last_reuse else (n - 1,)
        for inner in itertools.combinations(range(1, n - 1), args.computes - 1 - len(last)):
            acts = ["compute" if t in (0, *last, *inner) else "step" for t in range(n)]
            schedules.append((acts, [None if a == "compute" else "plain" for a in acts]))
    try:
        for acts, forms in schedules:
            order = {t: (1 if f == "linear" else 0) for t, f in enumerate(forms)}

            def force(t: int, acts=acts, order=order) -> str | None:
                for g in ctrl.granularities.values():
                    g.use_form(order[t], taus)
                return acts[t]

            ctrl.force = force
            errs = []
            for p in prompts:
                errs.append(rel_l1(latent(p), refs[p]))
            ctrl.force = None
            done = [r.action for r in handle.stats().records if r.branch == "uncond"]
            if done != acts:  # a forced reuse was impossible (e.g. no entry): not this schedule
                skipped += 1
                continue
            measured.append(float(np.mean(errs)))
            per_prompt.append(errs)
            predicted.append(
                predicted_error(
                    profile.errors, taus, acts, forms, args.guidance, path_aware=args.path_aware
                )
            )
            codes.append(
                "".join(
                    "C" if a == "compute" else (a[0].upper() if f == "linear" else a[0])
                    for a, f in zip(acts, forms, strict=True)
                )
            )
    finally:
        handle.remove()
    pr, me = np.array(predicted), np.array(measured)
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = float(np.corrcoef(rank(pr), rank(me))[0, 1])
    ratio = me / np.maximum(pr, 1e-12)
    q1, q3 = np.percentile(ratio, 25), np.percentile(ratio, 75)
    print(
        f"{args.model} {n} steps CFG {args.guidance:g}, {len(schedules)} schedules, "
        f"{'path-aware' if args.path_aware else 'additive'}, "
        f"prompts {list(prompts)} ({skipped} not executable, skipped): Spearman rho {rho:.3f}; "
        "measured/predicted median "
        f"{np.median(ratio):.2f} (IQR {q1:.2f}-{q3:.2f})"
    )
    if args.codes is not None:
        for c, m_, p_, e_ in zip(codes, me, pr, per_prompt, strict=True):
            each = " ".join(f"{e:.4f}" for e in e_)
            print(f"  {c}  measured {m_:.4f}  predicted {p_:.5f}  per prompt {each}")
    elif args.computes is not None:
        print(f"measured error over the {len(me)} schedules: best {me.min():.4f}, median "
              f"{np.median(me):.4f}")  # fmt: skip
        for label, key in (("measured", me), ("predicted", pr)):
            print(f"best five by {label} error (code, measured, predicted):")
            for i in np.argsort(key)[:5]:
                print(f"  {codes[i]}  {me[i]:.4f}  {pr[i]:.5f}")


if __name__ == "__main__":
    main()
