"""Train (and export) the bundled text-to-video models (``--arch wan`` or ``--arch hunyuan``).

One command trains the Wan model (``bundled-wan``) from scratch in under 2 hours on 2 idle cores
(6500 steps, 83 min of steps and 86 min in all on an AMX x86_64 machine; bf16 autocast and
``--compile`` as measured fastest there)::

    python -m mixcache_lab.bundled.train train --run-dir runs/bundled --steps 6500 \
        --schedule-minutes 100 --max-minutes 118 --lr 0.0008 --warmup 150 \
        --threads 2 --precision bf16 --compile --eval-every 500
    python -m mixcache_lab.bundled.train export --run-dir runs/bundled --out runs/bundled_export

and one the HunyuanVideo-architecture model (``bundled-hunyuan``: 2 dual-stream + 14
single-stream blocks, 144 wide; :mod:`mixcache_lab.bundled.hunyuan`), with the same recipe; the
export writes it into the package (``model_hunyuan/``)::

    python -m mixcache_lab.bundled.train train --arch hunyuan --run-dir runs/bundled-hunyuan \
        --steps 6000 --schedule-minutes 100 --max-minutes 110 --lr 0.0008 --warmup 150 \
        --threads 2 --precision bf16 --compile --eval-every 500
    python -m mixcache_lab.bundled.train export --run-dir runs/bundled-hunyuan

A training step of it costs 0.93 s on 2 idle threads with ``--compile`` on the AMX machine
above (1.5-2.0 s on a 2-core AMD EPYC, where a 95-minute run reached only ~3100 steps and did
not learn shapes well enough), so its 100-minute schedule is about 6000 steps; on a slower
machine ``--schedule-minutes`` still anneals the learning rate by 100 min and ``--max-minutes``
stops by 110, but the model may then fall short of the quality bar: the export writes what the
run reached into the model card next to the weights.

The shipped Wan weights come from an earlier two-stage run of 172 min (``model/MODEL_CARD.md`` lists
both stages' commands, and what the one-command re-run above reached next to them).

Training is rectified flow as in Wan: ``x_t = (1 - t) x0 + t * noise``, the transformer predicts
``noise - x0``; t is drawn uniformly and warped by the same flow shift the sampler uses, so the
training noise levels have the density of the 50 sampling steps. Prompts are dropped (replaced by
the empty prompt, which embeds to zeros) with probability 0.1 for classifier-free guidance.
AdamW with linear warm-up and cosine decay, gradient clipping, and an EMA of the weights (the EMA
is what gets exported).

Every batch, noise draw and timestep is a function of (seed, step) only, and checkpoints hold the
model, EMA, optimiser and histories, so a run stopped by ``--max-minutes`` (or killed) resumes
where its last checkpoint left it by re-running the same command.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .dataset import HELDOUT_PROMPTS, heldout_seed, training_example
from .pipeline import (
    BundledT2VPipeline,
    cfg_call_kwargs,
    pipeline_class_for_arch,
    pixels_to_latents,
)

logger = logging.getLogger("mixcache")

ARCHS: tuple[str, ...] = ("wan", "hunyuan")
# The recipe, the same for every architecture.
RECIPE_DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "batch_size": 16,
    "lr": 6e-4,
    "min_lr_frac": 0.1,
    "warmup": 200,
    "weight_decay": 0.01,
    "ema_decay": 0.998,
    "prompt_dropout": 0.1,
    "flow_shift": 3.0,
    "grad_clip": 1.0,
}


def defaults_for(arch: str) -> dict[str, Any]:
    """Training defaults of ``arch``: the recipe plus its architecture settings."""
    return {**RECIPE_DEFAULTS, **pipeline_class_for_arch(arch).arch_defaults}


# The Wan model's (a record without an ``arch`` is a Wan run).
DEFAULTS: dict[str, Any] = defaults_for("wan")
ARCH_KEYS: tuple[str, ...] = tuple(
    dict.fromkeys(k for a in ARCHS for k in pipeline_class_for_arch(a).arch_defaults)
)


def build_pipeline(cfg: dict[str, Any]) -> BundledT2VPipeline:
    """The randomly initialised pipeline of a run's config (its ``arch`` and settings)."""
    cls = pipeline_class_for_arch(cfg.get("arch", "wan"))
    return cls.from_config_random(
        seed=cfg["seed"], shift=cfg["flow_shift"], **{k: cfg[k] for k in cls.arch_defaults}
    )


def _lr_at(step: int, cfg: dict[str, Any], wall_seconds: float = 0.0) -> float:
    """Linear warm-up, then cosine decay to ``min_lr_frac * lr``.

    The decay ends at ``steps``, or earlier if ``schedule_minutes`` of training time are used
    up first: on a slower or busier machine the run still anneals before its time budget ends.
    """
    if step < cfg["warmup"]:
        return cfg["lr"] * (step + 1) / cfg["warmup"]
    p = (step - cfg["warmup"]) / max(1, cfg["steps"] - cfg["warmup"])
    if cfg.get("schedule_minutes"):
        p = max(p, wall_seconds / (60.0 * cfg["schedule_minutes"]))
    p = min(1.0, p)
    lo = cfg["lr"] * cfg["min_lr_frac"]
    return lo + 0.5 * (cfg["lr"] - lo) * (1.0 + math.cos(math.pi * p))


def _batch(step: int, cfg: dict[str, Any]) -> tuple[list[str], torch.Tensor]:
    """The training batch of ``step``: prompts and latents (B, C, F, h, w)."""
    b = cfg["batch_size"]
    ex = [training_example(step * b + j, cfg["seed"]) for j in range(b)]
    prompts = [p for p, _ in ex]
    pixels = torch.from_numpy(np.stack([c for _, c in ex]))
    return prompts, pixels_to_latents(pixels)


def _loss(
    pipe: BundledT2VPipeline,
    prompts: list[str],
    x0: torch.Tensor,
    step: int,
    cfg: dict[str, Any],
    autocast: bool,
) -> torch.Tensor:
    """Rectified-flow loss of one batch; all randomness from a generator seeded by step."""
    g = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + step)
    b = x0.shape[0]
    u = torch.rand(b, generator=g)
    s = cfg["flow_shift"]
    sigma = s * u / (1.0 + (s - 1.0) * u)  # the sampler's shift applied to uniform t
    noise = torch.randn(x0.shape, generator=g)
    drop = torch.rand(b, generator=g) < cfg["prompt_dropout"]
    sig = sigma.view(b, 1, 1, 1, 1)
    xt = (1.0 - sig) * x0 + sig * noise
    target = noise - x0
    # A dropped prompt is the empty prompt, which the sampler's unconditional branch uses.
    kept = [("" if d else p) for p, d in zip(prompts, drop.tolist(), strict=True)]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        pred = pipe.training_prediction(xt, sigma, kept)
    return torch.nn.functional.mse_loss(pred.float(), target)


def _trainable(pipe: BundledT2VPipeline) -> list[torch.nn.Parameter]:
    return list(pipe.transformer.parameters()) + list(pipe.text_encoder.parameters())


def _pick_precision(pipe: BundledT2VPipeline, cfg: dict[str, Any], requested: str) -> bool:
    """Return True for bf16 autocast. ``auto`` times both (bf16 is slower on CPUs without AMX)."""
    if requested != "auto":
        return requested == "bf16"
    prompts, x0 = _batch(0, cfg)
    # One untimed call of each first: the very first backward pays allocator and kernel set-up,
    # which would otherwise count against whichever precision is timed first.
    for ac in (False, True):
        _loss(pipe, prompts, x0, 0, cfg, ac).backward()
    times = {}
    for ac in (False, True):
        best = float("inf")
        for _ in range(2):
            t0 = time.perf_counter()
            _loss(pipe, prompts, x0, 0, cfg, ac).backward()
            best = min(best, time.perf_counter() - t0)
        times[ac] = best
    for p in _trainable(pipe):
        p.grad = None
    logger.info("precision timing: fp32 %.2fs, bf16 %.2fs per batch", times[False], times[True])
    return times[True] < 0.9 * times[False]


@torch.no_grad()
def sample_heldout(
    pipe: BundledT2VPipeline, steps: int = 20, guidance: float = 5.0, n_seeds: int = 1
) -> tuple[list[str], np.ndarray]:
    """Generate every held-out prompt (``n_seeds`` seeds each) in one batch."""
    prompts = [p for p in HELDOUT_PROMPTS for _ in range(n_seeds)]
    gens = [torch.Generator().manual_seed(heldout_seed(i % n_seeds)) for i in range(len(prompts))]
    kwargs = cfg_call_kwargs(pipe, guidance)
    out = pipe(prompts, num_inference_steps=steps, generator=gens, **kwargs).frames
    return prompts, out


def _save_ckpt(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def _init_from_export(pipe: BundledT2VPipeline, src: Path, cfg: dict[str, Any]) -> None:
    """Start from the weights of an exported model (a continued run, not a fresh one).

    The exported weights are the EMA of the earlier run; its optimiser state is not kept, so the
    continued run warms its learning rate up again. The earlier run's record is kept in
    ``cfg["init_from_record"]`` so the exported card shows the whole recipe. A different
    architecture fails in ``load_state_dict`` naming the mismatched keys.
    """
    from . import load_bundled_pipeline

    source = load_bundled_pipeline(src)
    pipe.transformer.load_state_dict(source.transformer.state_dict())
    pipe.text_encoder.load_state_dict(source.text_encoder.state_dict())
    cfg["init_from"] = str(src)
    record = src / "training_record.json"
    if record.is_file():
        cfg["init_from_record"] = json.loads(record.read_text())
    logger.info("initialised from the exported weights in %s", src)


def train(args: argparse.Namespace) -> None:
    """Train or resume a run in ``args.run_dir`` until ``steps`` or the wall-clock budget."""
    t_process = time.perf_counter()  # elapsed time counts set-up, compile and evals too
    run = Path(args.run_dir)
    run.mkdir(parents=True, exist_ok=True)
    ckpt_path = run / "ckpt.pt"
    torch.set_num_threads(args.threads)

    state: dict[str, Any] | None = None
    if ckpt_path.exists():
        state = torch.load(ckpt_path, map_location="cpu", weights_only=False)
        cfg = state["cfg"]
        if args.arch != cfg.get("arch", "wan"):
            raise SystemExit(
                f"{run} holds a {cfg.get('arch', 'wan')} run; this command asks for --arch "
                f"{args.arch} (use another --run-dir)"
            )
        logger.info("resuming from %s at step %d", ckpt_path, state["step"])
    else:
        cfg = {"arch": args.arch, **defaults_for(args.arch)}
        for k in ARCH_KEYS:
            if getattr(args, k, None) is not None and k not in cfg:
                raise SystemExit(f"--{k.replace('_', '-')} does not apply to --arch {args.arch}")
        for k in cfg:
            v = getattr(args, k, None)
            if v is not None:
                cfg[k] = v
    cfg["steps"] = args.steps if args.steps is not None else cfg.get("steps", 4000)
    if args.schedule_minutes is not None:
        cfg["schedule_minutes"] = args.schedule_minutes
    if state is None:
        cfg["compile"] = bool(args.compile)
        cfg["max_minutes"] = args.max_minutes  # for the card's command; each run obeys its own

    pipe = build_pipeline(cfg)
    pipe.set_progress_bar_config(disable=True)
    if state is None and args.init_from:
        _init_from_export(pipe, Path(args.init_from), cfg)
    params = _trainable(pipe)
    decay, no_decay = [], []
    for p in params:
        (decay if p.ndim >= 2 else no_decay).append(p)
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": cfg["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=cfg["lr"],
        betas=(0.9, 0.99),
    )
    ema = copy.deepcopy(pipe)
    step, wall, elapsed0, history, evals = 0, 0.0, 0.0, [], []
    if state is not None:
        pipe.transformer.load_state_dict(state["transformer"])
        pipe.text_encoder.load_state_dict(state["text_encoder"])
        ema.transformer.load_state_dict(state["ema_transformer"])
        ema.text_encoder.load_state_dict(state["ema_text_encoder"])
        opt.load_state_dict(state["opt"])
        step, wall = state["step"], state["wall_seconds"]
        elapsed0 = state.get("elapsed_seconds", wall)
        history, evals = state["history"], state["evals"]
        autocast = state["autocast"]
    else:
        autocast = _pick_precision(pipe, cfg, args.precision)
    logger.info("config %s; bf16 autocast=%s; threads=%d", cfg, autocast, args.threads)
    ema_params = _trainable(ema)
    if cfg.get("compile"):
        # After the EMA copy, so only the training forward is compiled (the EMA samples the
        # held-out evals eagerly); Module.compile keeps the state_dict keys unprefixed.
        pipe.transformer.compile()

    def checkpoint() -> None:
        _save_ckpt(
            ckpt_path,
            {
                "cfg": cfg,
                "step": step,
                "wall_seconds": wall,
                "elapsed_seconds": elapsed0 + time.perf_counter() - t_process,
                "history": history,
                "evals": evals,
                "autocast": autocast,
                "threads": args.threads,
                "transformer": pipe.transformer.state_dict(),
                "text_encoder": pipe.text_encoder.state_dict(),
                "ema_transformer": ema.transformer.state_dict(),
                "ema_text_encoder": ema.text_encoder.state_dict(),
                "opt": opt.state_dict(),
            },
        )
        logger.info("checkpoint at step %d (%.1f min trained)", step, wall / 60)

    def evaluate() -> None:
        from .evaluator import adherence

        ema.transformer.eval()
        ema.text_encoder.eval()
        t0 = time.perf_counter()
        prompts, clips = sample_heldout(ema, steps=args.eval_steps)
        a = adherence(prompts, clips)
        evals.append({"step": step, **a.as_dict()})
        np.savez_compressed(run / f"samples_{step:06d}.npz", clips=clips)
        logger.info(
            "eval step %d: held-out color %.2f shape %.2f direction %.2f all %.2f (%.1fs)",
            step,
            a.color,
            a.shape,
            a.direction,
            a.all_correct,
            time.perf_counter() - t0,
        )

    start = time.perf_counter()
    last_ckpt = start
    budget = args.max_minutes * 60.0
    pipe.transformer.train()
    pipe.text_encoder.train()
    running, t_log = 0.0, time.perf_counter()
    while step < cfg["steps"]:
        if time.perf_counter() - start > budget:
            logger.info("wall-clock budget of %.1f min reached", args.max_minutes)
            break
        t_step = time.perf_counter()
        lr = _lr_at(step, cfg, wall)
        for gr in opt.param_groups:
            gr["lr"] = lr
        prompts, x0 = _batch(step, cfg)
        loss = _loss(pipe, prompts, x0, step, cfg, autocast)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg["grad_clip"])
        opt.step()
        d = min(cfg["ema_decay"], (1.0 + step) / (10.0 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, params, 1.0 - d)
        step += 1
        wall += time.perf_counter() - t_step
        lv = float(loss.detach())
        history.append((step, lv))
        running += lv
        if step % args.log_every == 0:
            dt = (time.perf_counter() - t_log) / args.log_every
            logger.info(
                "step %d loss %.4f lr %.2e %.2fs/step trained %.1f min",
                step,
                running / args.log_every,
                lr,
                dt,
                wall / 60,
            )
            running, t_log = 0.0, time.perf_counter()
        if args.eval_every and step % args.eval_every == 0:
            evaluate()
            pipe.transformer.train()
            pipe.text_encoder.train()
        if time.perf_counter() - last_ckpt > args.ckpt_minutes * 60:
            checkpoint()
            last_ckpt = time.perf_counter()
    if not evals or evals[-1]["step"] != step:
        evaluate()
    checkpoint()
    logger.info("done: step %d, %.1f min trained", step, wall / 60)


def _model_entry(cfg: dict[str, Any]) -> Any:
    """The :class:`~mixcache_lab.bundled.BundledModel` a run's config trains."""
    from . import BUNDLED_MODELS

    arch = cfg.get("arch", "wan")
    return next(m for m in BUNDLED_MODELS.values() if m.arch == arch)


def _plot(run: Path, state: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = np.asarray(state["history"])
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(hist[:, 0], hist[:, 1], alpha=0.25, lw=0.6, label="batch loss")
    k = 50
    if len(hist) > k:
        sm = np.convolve(hist[:, 1], np.ones(k) / k, mode="valid")
        ax.plot(hist[k - 1 :, 0], sm, lw=1.5, label=f"mean of {k}")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("rectified-flow MSE")
    ax.set_title(f"{_plot_name(state['cfg'])}: training loss")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "loss.png", dpi=110)
    plt.close(fig)

    ev = state["evals"]
    if ev:
        fig, ax = plt.subplots(figsize=(6, 3.5))
        steps = [e["step"] for e in ev]
        for key in ("color", "shape", "direction", "all_correct"):
            ax.plot(steps, [e[key] for e in ev], marker="o", ms=3, label=key)
        ax.set_ylim(-0.02, 1.02)
        ax.set_xlabel("optimiser step")
        ax.set_ylabel("held-out accuracy")
        ax.set_title("adherence on held-out prompts (EMA, 20 steps, CFG 5)")
        ax.legend(loc="lower right")
        fig.tight_layout()
        fig.savefig(out / "adherence.png", dpi=110)
        plt.close(fig)


def export(args: argparse.Namespace) -> None:
    """Write the EMA weights of the run's checkpoint as the shipped pipeline directory."""
    run = Path(args.run_dir)
    torch.set_num_threads(args.threads)
    state = torch.load(run / "ckpt.pt", map_location="cpu", weights_only=False)
    cfg = state["cfg"]
    pipe = build_pipeline(cfg)
    pipe.transformer.load_state_dict(state["ema_transformer"])
    pipe.text_encoder.load_state_dict(state["ema_text_encoder"])
    out = Path(args.out) if args.out else _model_entry(cfg).directory
    out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(out, safe_serialization=True)
    _plot(run, state, out)
    record = {
        "config": cfg,
        "steps_trained": state["step"],
        "wall_minutes": round(state["wall_seconds"] / 60.0, 1),
        # None for checkpoints written before elapsed time was recorded (not the step time).
        "elapsed_minutes": (
            round(state["elapsed_seconds"] / 60.0, 1) if "elapsed_seconds" in state else None
        ),
        "bf16_autocast": state["autocast"],
        "threads": state.get("threads"),
        "final_loss_mean_last_100": float(np.mean([x for _, x in state["history"][-100:]])),
        "evals": state["evals"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    _portable_model_index(out)
    logger.info("exported step %d to %s", state["step"], out)

    # Reload what was written (the shipped path) and measure its per-step change profile.
    from . import load_bundled_pipeline
    from .analysis import change_profile, plot_change_profile
    from .dataset import BENCH_PROMPTS

    shipped = load_bundled_pipeline(out)
    profile = change_profile(shipped, BENCH_PROMPTS[:4], steps=50, guidance=5.0)
    (out / "change_profile.json").write_text(json.dumps(profile, indent=1) + "\n")
    plot_change_profile(
        profile,
        out / "change_profile.png",
        f"{_plot_name(cfg)}: output change per step (50 steps)",
    )

    # The adherence the card states is measured here, on what was written, at the settings
    # users run (50 steps, CFG): the same numbers `mixcache adherence` prints.
    from .evaluator import generated_adherence, ground_truth_adherence

    seeds = 2
    gen = generated_adherence(shipped, HELDOUT_PROMPTS, seeds=seeds, steps=50, guidance=5.0)
    gt = ground_truth_adherence(HELDOUT_PROMPTS, seeds=seeds)
    record["adherence_heldout_50_steps"] = {
        "prompts": len(HELDOUT_PROMPTS),
        "seeds": seeds,
        "guidance": 5.0,  # the pipeline's default, which generated_adherence uses
        "generated": gen.as_dict(),
        "ground_truth": gt.as_dict(),
    }
    (out / "training_record.json").write_text(json.dumps(record, indent=2) + "\n")
    (out / "MODEL_CARD.md").write_text(model_card(record))


def _plot_name(cfg: dict[str, Any]) -> str:
    # The Wan model's plots keep the title they were shipped with.
    return "bundled model" if cfg.get("arch", "wan") == "wan" else _model_entry(cfg).name


def _stages(record: dict[str, Any]) -> list[dict[str, Any]]:
    """The training stages of a record, oldest first (a continued run nests its parent's)."""
    parent = record.get("config", {}).get("init_from_record")
    return ([*_stages(parent)] if parent else []) + [record]


def _train_command(st: dict[str, Any], stage: int, n_stages: int = 1) -> str:
    """The ``train`` command that reproduces a stage (non-default values spelled out)."""
    c = st["config"]
    arch = c.get("arch", "wan")
    run_dir = _model_entry(c).run_dir if n_stages == 1 else f"runs/stage{stage}"
    parts = ["python -m mixcache_lab.bundled.train train"]
    if arch != "wan":
        parts.append(f"--arch {arch}")
    parts.append(f"--run-dir {run_dir}")
    if c.get("init_from"):
        parts.append(f"--init-from <stage {stage - 1} export>")
    parts.append(f"--steps {c['steps']}")
    if c.get("schedule_minutes"):
        parts.append(f"--schedule-minutes {c['schedule_minutes']:g}")
    if c.get("max_minutes"):
        parts.append(f"--max-minutes {c['max_minutes']:g}")
    defaults = defaults_for(arch)
    parts += [
        f"--{k.replace('_', '-')} {c[k]:g}" for k in defaults if k in c and c[k] != defaults[k]
    ]
    if st.get("threads"):
        parts.append(f"--threads {st['threads']}")
    if "bf16_autocast" in st:
        parts.append("--precision " + ("bf16" if st["bf16_autocast"] else "fp32"))
    if c.get("compile"):
        parts.append("--compile")
    return " ".join(parts)


def _time_cell(st: dict[str, Any]) -> str:
    """Training time of a stage (optimiser steps only), and the whole run's when recorded."""
    cell = f"{st['wall_minutes']} min"
    if st.get("elapsed_minutes"):
        cell += f" of steps, {st['elapsed_minutes']} min in all (set-up, compile, evals)"
    return f"{cell} ({st.get('threads')} thread(s), bf16 autocast {st.get('bf16_autocast')})"


def reproduction_summary(record: dict[str, Any], source: str) -> dict[str, Any]:
    """What a re-run of the training recipe produced, from the re-run's exported record.

    ``source`` is where that record (and the re-run's plots) can be found, as the card cites it.
    """
    stages = _stages(record)
    adh = record.get("adherence_heldout_50_steps")
    if adh is None:
        raise ValueError("the reproduction's record has no 50-step adherence (export it first)")
    return {
        "commands": [_train_command(st, i, len(stages)) for i, st in enumerate(stages, 1)],
        "steps_trained": sum(st["steps_trained"] for st in stages),
        "wall_minutes": round(sum(st["wall_minutes"] for st in stages), 1),
        "elapsed_minutes": record.get("elapsed_minutes"),
        "threads": record.get("threads"),
        "bf16_autocast": record.get("bf16_autocast"),
        "machine": record.get("machine"),
        "final_loss_mean_last_100": record["final_loss_mean_last_100"],
        "adherence_heldout_50_steps": adh,
        "source": source,
    }


def _reproduction_lines(record: dict[str, Any]) -> list[str]:
    rep = record.get("reproduction")
    if not rep:
        return []
    g = rep["adherence_heldout_50_steps"]["generated"]
    ours = record["adherence_heldout_50_steps"]["generated"]
    elapsed = rep.get("elapsed_minutes")
    lines = [
        "## Reproducing it",
        "",
        "A from-scratch re-run of the training recipe, exported and measured the same way",
        f"(its record and plots: `{rep['source']}`):",
        "",
        *[f"    {cmd}" for cmd in rep["commands"]],
        "",
        f"{rep['steps_trained']} optimiser steps, {rep['wall_minutes']} min of training steps"
        + (f", {elapsed} min in all" if elapsed else "")
        + f" ({rep['threads']} thread(s), bf16 autocast {rep['bf16_autocast']}, "
        f"{rep['machine']}); final training loss {rep['final_loss_mean_last_100']:.4f}.",
        "",
        "| held-out, 50 steps, CFG | colour | shape | direction | all three |",
        "|---|---|---|---|---|",
    ]
    lines += [_adherence_row("this model", ours), _adherence_row("the re-run", g)]
    return [*lines, ""]


def _adherence_row(name: str, a: dict[str, float]) -> str:
    """One Markdown table row of held-out adherence fractions."""
    cells = " | ".join(f"{a[k]:.1%}" for k in ("color", "shape", "direction", "all_correct"))
    return f"| {name} | {cells} |"


def _architecture_lines(cfg: dict[str, Any]) -> dict[str, Any]:
    """What a model card says about the architecture of ``cfg`` (the rest is shared)."""
    width = cfg["num_heads"] * cfg["head_dim"]
    heads = f"{cfg['num_heads']} heads x {cfg['head_dim']} = {width} wide"
    if cfg.get("arch", "wan") == "wan":
        return {
            "title": "# The bundled mixcache text-to-video model",
            "intro": [
                "CPU. It is a diffusers `WanTransformer3DModel` under a pipeline that calls it "
                "exactly",
                "as `WanPipeline` does (cond and uncond as separate calls in `cache_context`).",
            ],
            "model": [
                f"- transformer: `WanTransformer3DModel`, {cfg['num_layers']} blocks, {heads}, "
                f"FFN {cfg['ffn_mult']}x, patch 1x2x2;",
                "- text encoder: one-layer `UMT5EncoderModel` (64 wide), trained with the "
                "transformer;",
                "  a fixed word-level tokenizer (deterministic across processes);",
            ],
            "shift_note": "(Wan-like)",
            "cfg": "CFG",
            "measure": "`mixcache adherence`",
        }
    blocks = cfg["num_layers"] + cfg["num_single_layers"]
    return {
        "title": "# The bundled mixcache text-to-video model on the HunyuanVideo architecture",
        "intro": [
            "CPU (`--model bundled-hunyuan`). It is a diffusers `HunyuanVideoTransformer3DModel` "
            "under a",
            "pipeline that calls it exactly as `HunyuanVideoPipeline` does (cond in",
            '`cache_context("cond")`, with true CFG the uncond pass in `cache_context("uncond")`).',
        ],
        "model": [
            f"- transformer: `HunyuanVideoTransformer3DModel`, {cfg['num_layers']} dual-stream + "
            f"{cfg['num_single_layers']} single-stream blocks ({blocks} in all), {heads}, "
            f"MLP {cfg['ffn_mult']}x, patch 1x2x2, no guidance embedder (true CFG);",
            "- text encoder: one-layer `UMT5EncoderModel` (64 wide), trained with the "
            "transformer; it gives",
            "  `encoder_hidden_states` and `encoder_attention_mask`, and its masked mean is",
            "  `pooled_projections`; a fixed word-level tokenizer that starts every prompt with",
            "  `<s>` (so the empty prompt of the unconditional branch has one attended token);",
        ],
        "shift_note": "(as the Wan model; HunyuanVideo ships 7.0)",
        "cfg": "true CFG",
        "measure": "`mixcache adherence --model bundled-hunyuan`",
    }


def model_card(record: dict[str, Any]) -> str:
    """The model card (Markdown) of an exported model, written from its training record."""
    cfg = record["config"]
    stages = _stages(record)
    arch = _architecture_lines(cfg)
    lines = [
        arch["title"],
        "",
        "A small text-to-video diffusion model trained by this project so that MixCache (and",
        "every peer cache) can be run and measured on a *trained* denoising trajectory on any",
        *arch["intro"],
        "",
        "## What it is",
        "",
        *arch["model"],
        "- latents: a fixed invertible space-to-depth map (no VAE): 9 frames of 32x32 px ->",
        "  5 x 16 x 16 latents of 24 channels, 320 tokens per clip;",
        "- scheduler: `FlowMatchEulerDiscreteScheduler`, shift "
        f"{cfg['flow_shift']} {arch['shift_note']}; sampled with 50 steps and {arch['cfg']} 5.0 "
        "by default;",
        "- data: procedural clips (`mixcache_lab.bundled.dataset`): a circle, square or "
        "triangle of",
        "  one of six colours moving left, right, up or down, captioned",
        '  "a <colour> <shape> moving <direction>". 16 of the 72 prompts are held out',
        "  (unseen combinations), and evaluation seeds are never used in training.",
        "",
        "## How it was trained",
        "",
        "Rectified flow as in Wan (`x_t = (1 - t) x0 + t noise`, predict `noise - x0`, t warped",
        "by the sampler's shift), prompt dropout for classifier-free guidance, AdamW with",
        "warm-up and cosine decay, EMA weights (exported). Every batch and noise draw is a",
        "function of (seed, step), so runs are reproducible and resumable.",
        "",
        "| stage | command | optimiser steps | batch | peak LR | wall time | machine |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, st in enumerate(stages, 1):
        c = st["config"]
        cmd = _train_command(st, i, len(stages))
        lines.append(
            f"| {i} | `{cmd}` | {st['steps_trained']} | {c['batch_size']} | {c['lr']:g} | "
            f"{_time_cell(st)} | {st.get('machine', '?')} |"
        )
    total = sum(st["steps_trained"] for st in stages)
    minutes = sum(st["wall_minutes"] for st in stages)
    lines += [
        "",
        f"Total: {total} optimiser steps, {minutes:.0f} min of training wall time. A stage",
        "that continues another starts from its exported EMA weights with a fresh optimiser",
        "(`--init-from`); export with `python -m mixcache_lab.bundled.train export --run-dir ...`.",
        f"Final training loss (mean of the last 100 batches): "
        f"{record['final_loss_mean_last_100']:.4f}.",
        "",
        "## Prompt adherence",
        "",
    ]
    adh = record.get("adherence_heldout_50_steps")
    if adh:
        g, t = adh["generated"], adh["ground_truth"]
        lines += [
            f"Held-out prompts ({adh['prompts']} prompts x {adh['seeds']} held-out seeds), "
            "read by the deterministic evaluator (`mixcache_lab.bundled.evaluator`), "
            f"uncached, 50 steps, {arch['cfg']}:",
            "",
            "| clips | colour | shape | direction | all three |",
            "|---|---|---|---|---|",
            _adherence_row("ground truth (rendered)", t),
            _adherence_row("generated by this model", g),
            "",
            f"Re-measure with {arch['measure']} (prints the same table).",
            "",
        ]
    lines += _reproduction_lines(record)
    lines += [
        "During training (EMA weights, 20 steps, one seed per held-out prompt): `adherence.png`;",
        "loss: `loss.png`; the per-step change of the transformer output per CFG branch (what",
        "caches exploit): `change_profile.png`.",
        "",
        "## Limits",
        "",
        "- 32x32 px, 9 frames, a closed vocabulary of 15 words: a test bed for caches, not a",
        "  general video model. Unknown words are rejected with a list of the known ones.",
        "- Quality numbers measured on it are about *this* trajectory; real Wan/HunyuanVideo",
        "  checkpoints run through the same code path but were not available here.",
        "",
    ]
    return "\n".join(lines)


def attach_reproduction(model_dir: Path, reproduction_dir: Path) -> None:
    """Record in ``model_dir``'s card what an exported re-run (``reproduction_dir``) reached."""
    path = model_dir / "training_record.json"
    record = json.loads(path.read_text())
    other = json.loads((reproduction_dir / "training_record.json").read_text())
    record["reproduction"] = reproduction_summary(other, reproduction_dir.as_posix())
    path.write_text(json.dumps(record, indent=2) + "\n")
    (model_dir / "MODEL_CARD.md").write_text(model_card(record))


def _portable_model_index(out: Path) -> None:
    """Name the tokenizer class ``PreTrainedTokenizerFast``.

    transformers 5 saves it as ``TokenizersBackend``, a name transformers 4 does not have;
    ``PreTrainedTokenizerFast`` loads the same tokenizer.json under both.
    """
    path = out / "model_index.json"
    index = json.loads(path.read_text())
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    path.write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry: ``train`` or ``export``."""
    ap = argparse.ArgumentParser(prog="python -m mixcache_lab.bundled.train", description=__doc__)
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train or resume")
    t.add_argument(
        "--arch",
        choices=ARCHS,
        default="wan",
        help="transformer architecture: wan (bundled-wan) or hunyuan (bundled-hunyuan)",
    )
    t.add_argument(
        "--run-dir", default=None, help="default: runs/bundled (wan), runs/bundled-hunyuan"
    )
    t.add_argument("--steps", type=int, default=None, help="total optimiser steps (LR schedule)")
    t.add_argument("--max-minutes", type=float, default=100.0, help="wall budget of this run")
    t.add_argument(
        "--schedule-minutes",
        type=float,
        default=None,
        help="end the LR decay after this much training time even if --steps is not reached",
    )
    t.add_argument("--threads", type=int, default=1, help="1 is fastest when anything else runs")
    t.add_argument(
        "--init-from",
        default=None,
        help="continue from an exported model directory (its EMA weights) instead of random init",
    )
    t.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto")
    t.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the transformer's training forward (needs a C compiler; about 20%% "
        "faster per step in a one-off timing on a 2-core AMX CPU; compiling takes a minute)",
    )
    t.add_argument("--ckpt-minutes", type=float, default=5.0)
    t.add_argument("--eval-every", type=int, default=300)
    t.add_argument("--eval-steps", type=int, default=20)
    t.add_argument("--log-every", type=int, default=25)
    every_key = {**RECIPE_DEFAULTS}
    for a in ARCHS:
        every_key.update({k: v for k, v in defaults_for(a).items() if k not in every_key})
    for k, v in every_key.items():
        t.add_argument("--" + k.replace("_", "-"), type=type(v), default=None)
    e = sub.add_parser("export", help="write the EMA weights as the shipped model")
    e.add_argument("--run-dir", default="runs/bundled")
    e.add_argument(
        "--out",
        default=None,
        help="default: the package's directory of the run's model (model/, model_hunyuan/)",
    )
    e.add_argument("--threads", type=int, default=1)
    c = sub.add_parser("card", help="add an exported re-run's results to a model's card")
    c.add_argument("--model", default=str(Path(__file__).parent / "model"))
    c.add_argument("--reproduction", required=True, help="the re-run's exported directory")
    args = ap.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True
    )
    if args.cmd == "train" and args.run_dir is None:
        args.run_dir = _model_entry({"arch": args.arch}).run_dir
    if args.cmd == "card":
        attach_reproduction(Path(args.model), Path(args.reproduction))
    else:
        train(args) if args.cmd == "train" else export(args)


if __name__ == "__main__":
    main()
