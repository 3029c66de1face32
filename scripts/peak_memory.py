"""Peak memory of one generation per method, each in a fresh process.

The bench measures peak RSS growth inside one long process, where what earlier methods left in
the allocator changes the next one's growth (run order moved it by 50-180 MB on
``wan-1.3b-shape``). Here every method gets its own process that builds the same pipeline, runs
the same 1-step warm-up, a 3-step warm-up with the method applied (then removed), then one
generation under the peak counter. glibc's mmap threshold is
fixed (``MALLOC_MMAP_THRESHOLD_``) so every tensor above 64 kB is its own mapping, returned to
the system when freed: resident memory then follows the live tensors instead of the allocator's
history, and "peak growth" is the peak of live memory during the generation.

It checks issue 21's memory target: the cached run's peak growth should be at most the uncached
run's plus the cache entries the method held at its fullest.

    python scripts/peak_memory.py --profile wan-1.3b-shape --steps 10 \
        --methods none,mixcache-balanced,mixcache-fast \
        --out docs/bench/peak-memory-wan-1.3b-shape.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_MMAP_THRESHOLD = str(64 * 1024)
_WARM_STEPS = 3


def _child(profile_name: str, steps: int, method: str) -> dict:
    from mixcache_lab.bench.methods import BenchContext, adapter_for
    from mixcache_lab.bench.profiles import get_profile
    from mixcache_lab.bench.runner import BenchSession, machine_info

    profile = get_profile(profile_name).with_call(steps=steps)
    specs = {s.name: s for s in profile.methods(profile.steps)}
    if method not in specs:
        raise SystemExit(f"unknown method {method!r}; this profile has: {', '.join(specs)}")
    session = BenchSession(profile)
    ctx = BenchContext(
        pipe=session.pipe,
        steps=profile.steps,
        dtype=session.pipe.transformer.dtype,
        cfg_batched=profile.cfg_batched,
        memo=session.memo,
    )
    config = specs[method].build(ctx)
    # A short warm-up generation with the method applied first (then removed, which frees
    # its entries): what the first cached call initialises once per process (imports, the
    # planner's tables, logging) is not counted as the method's memory.
    warm = profile.with_call(steps=_WARM_STEPS)
    installed = adapter_for(config).apply(session.pipe, config, ctx)
    session.generator(warm)(profile.prompts[0], profile.seed, installed, heavy=False)
    installed.remove()
    installed = adapter_for(config).apply(session.pipe, config, ctx)
    gen = session.generator(profile)
    t0 = time.perf_counter()
    out = gen(profile.prompts[0], profile.seed, installed, heavy=True)
    seconds = time.perf_counter() - t0
    installed.remove()
    return {
        "method": method,
        "peak_growth_mb": (out.rss_peak_delta or 0) / 2**20,
        "cache_entries_mb": (out.cache_bytes or 0) / 2**20,
        "block_flops": out.block_flops,
        "seconds": seconds,
        "counter": gen.memory_source,
        "machine": machine_info(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="wan-1.3b-shape")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--methods", default="none,mixcache-balanced,mixcache-fast")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(_child(args.profile, args.steps, args.child)))
        return

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=_MMAP_THRESHOLD)
    results = []
    for method in args.methods.split(","):
        print(f"[{method}] fresh process ...", flush=True)
        cmd = [sys.executable, __file__, "--profile", args.profile, "--steps", str(args.steps)]
        proc = subprocess.run(
            [*cmd, "--child", method], env=env, capture_output=True, text=True, check=False
        )
        line = next((s for s in proc.stdout.splitlines() if s.startswith("RESULT ")), None)
        if proc.returncode != 0 or line is None:
            sys.exit(f"[{method}] failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
        results.append(json.loads(line[len("RESULT ") :]))
        r = results[-1]
        print(
            f"[{method}] peak growth {r['peak_growth_mb']:.1f} MB, entries "
            f"{r['cache_entries_mb']:.1f} MB, {r['seconds']:.0f} s",
            flush=True,
        )

    base = next((r for r in results if r["method"] == "none"), None)
    print(f"\n{args.profile}, {args.steps} steps, one fresh process per method")
    print("| method | peak growth MB | entries MB | over uncached MB | within entries |")
    print("|---|---:|---:|---:|---|")
    for r in results:
        over = r["peak_growth_mb"] - base["peak_growth_mb"] if base else float("nan")
        r["over_uncached_mb"] = over
        r["within_entries"] = bool(base) and over <= r["cache_entries_mb"]
        ok = "-" if r is base else ("yes" if r["within_entries"] else "no")
        print(
            f"| {r['method']} | {r['peak_growth_mb']:.2f} | {r['cache_entries_mb']:.2f} | "
            f"{over:+.2f} | {ok} |"
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cmd = " ".join(["python", "scripts/peak_memory.py", *sys.argv[1:]])
        args.out.write_text(json.dumps({"command": cmd, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
