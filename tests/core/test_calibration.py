"""Impact calibration: exact I on the analytic toy; on tiny Wan deterministic, JSON, accepted by
the config, no hooks left."""

from __future__ import annotations

import json
import logging
import re

import pytest
import torch
from toy import E, ToyTransformer, make_inputs

from mixcache import ConfigError, ImpactProfile, MixCacheConfig, calibrate_impact
from mixcache_lab.tiny import tiny_call_kwargs


def _kwargs():
    kw = tiny_call_kwargs("wan")
    for key in ("num_inference_steps", "output_type"):
        kw.pop(key)
    return kw


def test_calibration_is_deterministic_json_and_usable(tiny_wan_pipe):
    args = dict(
        num_inference_steps=6, noise_levels=(0.1,), step_fractions=(0.5,), call_kwargs=_kwargs()
    )
    a = calibrate_impact(tiny_wan_pipe, ["a red circle moving right"], **args)
    b = calibrate_impact(tiny_wan_pipe, ["a red circle moving right"], **args)
    assert a == b and a.extra == b.extra
    data = json.loads(json.dumps(a.to_dict()))
    assert ImpactProfile.from_dict(data) == a
    assert a.family == "wan" and "WanTransformer3DModel" in a.measured_on
    assert all(a.impact(g) > 0 for g in ("step", "cfg", "block"))
    assert MixCacheConfig.preset("paper", impact=data).impact == a
    assert a.time_weights == ()  # one perturbed step: no time profile
    assert a.guidance_scale == _kwargs()["guidance_scale"] == 5.0  # what I^cfg was measured at
    registry = getattr(tiny_wan_pipe.transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks  # hooks removed


def test_calibration_reports_progress_over_every_generation(tiny_wan_pipe, monkeypatch):
    calls: list[tuple[int, int]] = []
    generations = []
    real_call = type(tiny_wan_pipe).__call__

    def counting_call(self, *a, **k):
        generations.append(1)
        return real_call(self, *a, **k)

    monkeypatch.setattr(type(tiny_wan_pipe), "__call__", counting_call)
    calibrate_impact(
        tiny_wan_pipe,
        ["a red circle"],
        num_inference_steps=4,
        noise_levels=(0.1, 0.2),
        step_fractions=(0.5,),
        call_kwargs=_kwargs(),
        progress=lambda done, total: calls.append((done, total)),
    )
    # 1 clean run + 3 granularities x 1 step x 2 noise levels, announced up front
    assert len(generations) == 7
    assert calls == [(i, 7) for i in range(1, 8)]


def test_calibration_without_cfg_says_so(tiny_wan_pipe):
    kw = {**_kwargs(), "guidance_scale": 1.0}
    p = calibrate_impact(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=4, noise_levels=(0.1,),
        step_fractions=(0.5,), call_kwargs=kw,
    )  # fmt: skip
    assert p.cfg == 1.0 and "cfg not measurable" in p.notes


def test_calibration_argument_errors(tiny_wan_pipe):
    with pytest.raises(ConfigError, match="at least one prompt"):
        calibrate_impact(tiny_wan_pipe, [])
    with pytest.raises(ConfigError, match="noise_levels"):
        calibrate_impact(tiny_wan_pipe, ["a"], noise_levels=(0.0,))


def test_calibrate_command_writes_a_profile(tmp_path):
    from click.testing import CliRunner

    from mixcache_lab.cli.calibrate import calibrate

    out = tmp_path / "wan.json"
    result = CliRunner().invoke(
        calibrate,
        ["tiny-wan", "--method", "noise", "--steps", "3", "--noise", "0.1", "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    profile = ImpactProfile.load(out)
    assert profile.family == "wan" and json.loads(out.read_text())["impact"]["step"] > 0
    assert profile.errors is None


def test_calibrate_command_writes_the_error_model_where_it_is_found(tmp_path, monkeypatch):
    """`mixcache calibrate MODEL` with no --out: the profile lands in the user's profile cache
    under the transformer's fingerprint, which apply_mixcache looks up."""
    from click.testing import CliRunner

    from mixcache.profiles import find_profile, transformer_fingerprint
    from mixcache_lab.cli.calibrate import calibrate
    from mixcache_lab.tiny import make_tiny_wan_pipeline

    monkeypatch.setenv("MIXCACHE_CACHE_DIR", str(tmp_path))
    result = CliRunner().invoke(calibrate, ["tiny-wan", "--steps", "8"])
    assert result.exit_code == 0, result.output
    pipe = make_tiny_wan_pipeline()
    path = tmp_path / f"{transformer_fingerprint(pipe.transformer)}.json"
    assert f"wrote {path}" in result.output
    profile, source, own = find_profile(pipe.transformer, "wan", pipe)
    assert own and source == str(path)
    assert profile.errors is not None and profile.errors.granularities == ("step", "cfg", "block")
    assert len(profile.errors.taus) == 8


def test_calibrate_a_saved_pipeline_of_another_family_then_apply_finds_it(tmp_path, monkeypatch):
    """As a user would: save a pipeline (CogVideoX: batched CFG, not a bundled family), run
    `mixcache calibrate DIR` with a pipeline argument it needs (--call), and apply_mixcache on
    the reloaded pipeline uses that profile and plans from it. cfg cannot be forced on a batched
    CFG forward, so its points are not run, and the notes count what ran."""
    from click.testing import CliRunner
    from diffusers import DiffusionPipeline

    from mixcache import apply_mixcache
    from mixcache_lab.cli.calibrate import calibrate
    from mixcache_lab.tiny import make_tiny_cogvideox_pipeline

    monkeypatch.setenv("MIXCACHE_CACHE_DIR", str(tmp_path / "cache"))
    make_tiny_cogvideox_pipeline().save_pretrained(tmp_path / "cog")
    args = [str(tmp_path / "cog"), "--steps", "8", "--height", "32", "--width", "32"]
    bad = CliRunner().invoke(calibrate, [*args, "--call", "no equals sign"])
    assert bad.exit_code != 0 and "expected KEY=VALUE" in bad.output
    result = CliRunner().invoke(calibrate, [*args, "--call", "max_sequence_length=16"])
    assert result.exit_code == 0, result.output
    written = tmp_path / "cog" / "mixcache_profile.json"
    assert f"wrote {written}" in result.output
    notes = json.loads(written.read_text())["errors"]["notes"]
    # The 4 default prompts x (1 + 3 step and 2 block points at 8 steps + the last step); no cfg
    # point ran.
    assert "4 prompt(s)" in notes and "28 generations" in notes and "'cfg'" not in notes
    # By default the size exponent is measured too, on runs of half the steps (at most 10).
    assert "of 4 steps" in notes and "the size exponent" in notes

    pipe = DiffusionPipeline.from_pretrained(tmp_path / "cog")
    pipe.set_progress_bar_config(disable=True)
    handle = apply_mixcache(pipe, "balanced")
    kw = dict(height=32, width=32, num_frames=9, max_sequence_length=16, guidance_scale=6.0)
    pipe("a cat", num_inference_steps=12, output_type="latent", **kw)
    handle.remove()
    stats = handle.stats()
    assert stats.profile == str(written) and stats.plan_note is None
    assert len(stats.plan) == 12 and abs(stats.compute_fraction - 1 / 2.25) <= 0.05 / 2.25


def test_error_calibration_measures_a_reuse_at_step_1(tiny_wan_pipe):
    """Plans reuse as early as step 1, where no signal exists yet (it needs two computes): the
    forced reuses of the calibration need none either, so the impact is measured there too."""
    from mixcache.calibration import calibrate_errors

    one = (1 / 7,)
    errors = calibrate_errors(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=8, call_kwargs=_kwargs(),
        impact_fractions={"step": one, "cfg": one, "block": one},
    )  # fmt: skip
    for g in ("step", "cfg", "block"):
        (tau, value), *_ = errors.impact[g]
        assert tau == pytest.approx(errors.taus[1]) and value > 0


def test_error_calibration_measures_the_size_exponent_on_a_short_run(tiny_wan_pipe, monkeypatch):
    """The short run's single step reuses give one exponent per point, at that run's own steps,
    from α = 1 + ln(m / price) / ln(r / r_1): a run whose measured deviation is exactly the
    linear price reads α = 1, one twice as large reads 1 + ln 2 / ln(r / r_1)."""
    from mixcache import calibration

    seen = []
    real = calibration.ErrorModel.size_terms

    def spy(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        seen.append(out)
        return out

    monkeypatch.setattr(calibration.ErrorModel, "size_terms", spy)
    errors = calibration.calibrate_errors(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=12, call_kwargs=_kwargs(),
        impact_fractions={"step": (0.5,)}, size_steps=6,
    )  # fmt: skip
    pipe_taus = calibration.run_taus(tiny_wan_pipe)
    assert len(pipe_taus) == 6  # the last run was a short one
    assert errors.size_exponent, errors.notes
    for tau, _, _ in errors.size_exponent:
        assert any(tau == pytest.approx(t, abs=1e-5) for t in pipe_taus[1:-1])
    assert all(0.25 <= a <= 3.0 for _, a, _ in errors.size_exponent)
    # ρ, the size each exponent was measured at: one of the ratios the calibration read.
    assert all(any(rho == pytest.approx(s) for _, s in seen) for _, _, rho in errors.size_exponent)
    assert "of 6 steps" in errors.notes
    # Short runs make larger errors than the calibration's own step: every ratio read is > 1.
    assert seen and all(ratio > 1.0 for _, ratio in seen)
    none = calibration.calibrate_errors(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=12, call_kwargs=_kwargs(),
        impact_fractions={"step": (0.5,)}, size_steps=None,
    )  # fmt: skip
    assert none.size_exponent == () and "of 6 steps" not in none.notes
    with pytest.raises(ConfigError, match="size_steps"):
        calibration.calibrate_errors(
            tiny_wan_pipe, ["a red circle"], num_inference_steps=12, call_kwargs=_kwargs(),
            size_steps=2,
        )  # fmt: skip


def test_error_calibration_shares_the_exact_runs_prefix(tiny_wan_pipe, caplog):
    """The single reuses replay the exact run's transformer outputs up to two steps before the
    reuse: the error model is the same bit for bit as with every step computed, the transformer
    runs fewer forwards, the notes state the compute spent, nothing warns (a forced run that
    starts late is not "fewer steps than planned"), and no hook is left."""
    from mixcache.calibration import calibrate_errors

    forwards = []
    embed = tiny_wan_pipe.transformer.patch_embedding
    counter = embed.register_forward_pre_hook(lambda *a: forwards.append(1))
    kw = dict(num_inference_steps=12, call_kwargs=_kwargs(), size_steps=6)
    try:
        with caplog.at_level(logging.WARNING, logger="mixcache"):
            shared = calibrate_errors(tiny_wan_pipe, ["a red circle"], **kw)
        ran_shared, forwards[:] = len(forwards), []
        full = calibrate_errors(tiny_wan_pipe, ["a red circle"], share_prefix=False, **kw)
        ran_full = len(forwards)
    finally:
        counter.remove()
    a, b = shared.to_dict(), full.to_dict()
    worth = {}
    for name, d in (("shared", a), ("full", b)):
        worth[name] = float(re.search(r"([\d.]+) generations' worth", d.pop("notes")).group(1))
    assert a == b
    assert ran_shared < 0.8 * ran_full
    # Without sharing every step of every run is counted: N runs of 12 steps and M of 6.
    runs, short = re.search(r"(\d+) generations and (\d+) of 6 steps", full.notes).groups()
    assert worth["full"] == pytest.approx(int(runs) + int(short) * 6 / 12, abs=0.05)
    assert worth["shared"] < 0.8 * worth["full"] and "shared the exact run's prefix" in shared.notes
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    registry = getattr(tiny_wan_pipe.transformer, "_diffusers_hook", None)
    assert registry is None or not registry.hooks


def test_error_calibration_without_a_step_count_computes_every_step(tiny_wan_pipe, monkeypatch):
    """A scheduler that does not count its steps (no ``step_index``) cannot key a replay: the
    calibration computes every step, says nothing of a shared prefix, and measures the same."""
    from mixcache import calibration

    kw = dict(num_inference_steps=8, call_kwargs=_kwargs(), size_steps=None)
    shared = calibration.calibrate_errors(tiny_wan_pipe, ["a red circle"], **kw)
    monkeypatch.setattr(calibration, "_step_index_hint", lambda pipe: lambda: None)
    blind = calibration.calibrate_errors(tiny_wan_pipe, ["a red circle"], **kw)
    assert "shared the exact run's prefix" in shared.notes
    assert "shared" not in blind.notes
    runs = int(re.search(r"(\d+) generations", blind.notes).group(1))
    assert f"{runs:.1f} generations' worth" in blind.notes
    a, b = shared.to_dict(), blind.to_dict()
    a.pop("notes"), b.pop("notes")
    assert a == b


def test_size_exponent_formula(monkeypatch):
    """α = 1 + ln(m / price) / ln(r / r_1), clamped to SIZE_EXPONENT_RANGE; points whose error
    is under 1.3 r_1 are left out."""
    from mixcache import calibration

    class Model:
        def reuse_error(self, *a, **k):
            return 0.4

        def size_terms(self, g, r, tau, h=None):
            return 2.0, {0.8: 4.0, 0.6: 1.1}[round(tau, 1)]

        def priced(self, g, r, tau):
            return 0.01

    class Gen:
        pipe = object()

        def __call__(self, prompt, seed, keep=None, steps=None, **kw):
            return "out"

    class Ctrl:
        force = None
        last_stats = None

    class Handle:
        def __init__(self):
            self.controllers = {"transformer": Ctrl()}

        def remove(self):
            pass

    Ctrl.last_stats = type(
        "S", (), {"records": [type("R", (), {"step": s, "action": "step"})() for s in (1, 2)]}
    )()
    monkeypatch.setattr(calibration, "apply_mixcache", lambda pipe, cfg: Handle())
    monkeypatch.setattr(calibration, "run_taus", lambda pipe: [1.0, 0.8, 0.6, 0.3])
    measured = {"x": 0.08}
    monkeypatch.setattr(calibration, "rel_l1", lambda out, clean: measured["x"])
    got = calibration._size_exponent(Model(), Gen(), ["p"], [0], None, 4, (1, 2))
    # price · h ratio = 0.02, m = 0.08: α = 1 + ln 4 / ln 4 = 2 at τ 0.8, measured at ρ = 4;
    # τ 0.6 (ratio 1.1) is left out.
    assert got == ((0.8, pytest.approx(2.0), pytest.approx(4.0)),)
    measured["x"] = 1e6
    assert calibration._size_exponent(Model(), Gen(), ["p"], [0], None, 4, (1, 2))[0][1] == 3.0


def test_error_calibration_measures_the_gain_of_the_run(tiny_wan_pipe, monkeypatch, caplog):
    """The gain at τ of step s + 1 is the final deviation of a single reuse at s over the
    deviation of the latent leaving s (absolute means), measured here independently through the
    pipeline's step callback; without that callback there is no gain curve, and a warning."""
    from mixcache import apply_mixcache
    from mixcache.calibration import calibrate_errors

    kw = dict(num_inference_steps=8, call_kwargs=_kwargs(), impact_fractions={"step": (3 / 7,)})
    errors = calibrate_errors(tiny_wan_pipe, ["a red circle"], **kw)
    ((tau, gain),) = errors.gain
    assert tau == pytest.approx(errors.taus[4])

    def run():
        seen = {}

        def keep(_p, i, _t, tensors):
            seen[i] = tensors["latents"].detach().float().clone()
            return {}

        out = tiny_wan_pipe(
            "a red circle", generator=torch.Generator().manual_seed(0), num_inference_steps=8,
            callback_on_step_end=keep, **{**_kwargs(), "output_type": "latent"},
        ).frames  # fmt: skip
        return out.float(), seen[3]

    clean, clean_3 = run()
    cfg = MixCacheConfig.preset("paper", trigger_threshold=0.0, min_warmup_steps=1,
                                step_probe="none", residual_order=0)  # fmt: skip
    handle = apply_mixcache(tiny_wan_pipe, cfg)
    handle.controllers["transformer"].force = lambda t: "step" if t == 3 else None
    try:
        out, out_3 = run()
    finally:
        handle.remove()
    want = float((out - clean).abs().mean()) / float((out_3 - clean_3).abs().mean())
    assert gain == pytest.approx(want, rel=1e-4) and gain != pytest.approx(1.0)
    # Round trip, and read back where it was measured.
    assert type(errors).from_dict(errors.to_dict()).gain_at(tau) == pytest.approx(gain, rel=1e-3)

    monkeypatch.setattr("mixcache.calibration._takes_step_callback", lambda pipe: False)
    with caplog.at_level("WARNING", logger="mixcache"):
        blind = calibrate_errors(tiny_wan_pipe, ["a red circle"], **kw)
    assert blind.gain == () and blind.gain_at(0.5) == 1.0
    assert "no gain curve" in caplog.text


def test_reuse_calibration_forces_one_real_reuse_per_run(tiny_wan_pipe):
    p = calibrate_impact(
        tiny_wan_pipe, ["a red circle"], num_inference_steps=6, step_fractions=(0.5, 0.8),
        call_kwargs=_kwargs(), method="reuse",
    )  # fmt: skip
    assert "one forced reuse" in p.notes
    assert all(p.impact(g) > 0 for g in ("step", "cfg", "block"))
    assert len(p.time_weights) == 2
    with pytest.raises(ConfigError, match="method='guess' is invalid"):
        calibrate_impact(tiny_wan_pipe, ["a"], method="guess")


# --------------------------------------------------------------------------- analytic toy
class ToyPipeline:
    """A linear "pipeline" around the toy transformer, called the way calibrate_impact calls one.

    Every step runs cond (e=+1) and, with ``guidance_scale > 1``, uncond (e=-1), combines them
    as ``uncond + g (cond - uncond)`` and moves the latent by ``dt (pred - x)``. The toy's output is
    ``x + t S(e)`` with ``S(e) = sum_i (c_i + d_i e)``, so the combination has derivative 1 in x:
    an error added to ``pred`` at some step reaches the final latent scaled by the same factor
    whatever granularity made it.
    """

    def __init__(self) -> None:
        self.transformer = ToyTransformer()

    def __call__(self, prompt, generator=None, num_inference_steps=5, output_type="latent",
                 return_dict=False, guidance_scale=5.0):  # fmt: skip
        x = make_inputs().float() + 1.0
        branches = ("cond", "uncond") if guidance_scale > 1 else ("cond",)
        for i in range(num_inference_steps):
            t = torch.tensor([1000.0 * (1 - i / num_inference_steps)])
            out = {}
            for b in branches:
                enc = torch.full((1, 2, 3), E[b])
                with self.transformer.cache_context(
                    b, step_index=i, num_inference_steps=num_inference_steps
                ):
                    out[b] = self.transformer(x, t, enc)[0]
            pred = out["cond"]
            if "uncond" in out:
                pred = out["uncond"] + guidance_scale * (out["cond"] - out["uncond"])
            x = x + 0.1 * (pred - x)
        self.transformer._reset_stateful_cache()
        return (x,)


def _toy_impact(g: float) -> dict[str, float]:
    """I^psi the noise method must find on the toy with guidance g (derived in the test below)."""
    m = ToyTransformer()

    def s(blocks, e):
        return sum(m.cs[i] + m.ds[i] * e for i in blocks)

    every, span = range(6), range(1, 4)  # middle_span(6, 1, 1, 0.5) = blocks 1..3
    k = {
        "step": abs((1 - g) * s(every, -1) + g * s(every, 1)),
        "block": abs((1 - g) * s(span, -1) + g * s(span, 1)),
    }
    if g > 1:
        k["cfg"] = abs(1 - g) * abs(s(every, 1) - s(every, -1))
    mean = sum(k.values()) / len(k)
    return {name: v / mean for name, v in k.items()}


@pytest.mark.parametrize(
    ("guidance", "expected"),
    [
        # S(+1) = 31.5, S(-1) = 10.5 (whole stack); 13.5 and 4.5 (span): K = 115.5, 84, 49.5
        (5.0, {"step": 115.5 / 83, "cfg": 84 / 83, "block": 49.5 / 83}),
        # one branch: cfg not measurable (1.0); K = 31.5 and 13.5, mean 22.5
        (1.0, {"step": 1.4, "cfg": 1.0, "block": 0.6}),
    ],
)
def test_noise_calibration_finds_the_analytic_impact_of_the_toy(guidance, expected):
    # Noise sigma * mean|X| * eps (eps shared by the branches and granularities of a step) is added
    # to X = the stack output (step), the uncond output scaled by |dR| (cfg), the span output
    # (block). On the toy every residual is the uniform t * S(e), so the error on pred is
    # sigma * eps * t * K_psi with K_step = |(1-g) S(-1) + g S(+1)|, K_cfg = |1-g| |S(+1) - S(-1)|,
    # K_block = the same as step over the span; everything else is common to psi, so
    # I^psi = K_psi / mean K exactly.
    assert _toy_impact(guidance) == pytest.approx({g: v for g, v in expected.items()
                                                   if guidance > 1 or g != "cfg"})  # fmt: skip
    p = calibrate_impact(
        ToyPipeline(), ["a"], num_inference_steps=6, noise_levels=(0.1,),
        step_fractions=(0.6,), call_kwargs={"guidance_scale": guidance},
    )  # fmt: skip
    got = {g: p.impact(g) for g in ("step", "cfg", "block")}
    assert got == pytest.approx(expected, rel=1e-4)
    assert ("cfg not measurable" in p.notes) == (guidance <= 1)


def test_noise_calibration_time_profile_is_shared_by_granularities_on_the_toy():
    # At each perturbed step the error of every granularity is sigma * eps * t * K_psi with the
    # same eps and propagation, so deviation / its own mean is the same for step, cfg and block.
    p = calibrate_impact(
        ToyPipeline(), ["a"], num_inference_steps=6, noise_levels=(0.1,),
        step_fractions=(0.2, 0.6, 1.0), call_kwargs={"guidance_scale": 5.0},
    )  # fmt: skip
    by_step = p.extra["by_step"]
    shapes = {}
    for g, per in by_step.items():
        mean = sum(per.values()) / len(per)
        shapes[g] = [per[f] / mean for f in sorted(per)]
    assert len(shapes["step"]) == 3
    assert shapes["cfg"] == pytest.approx(shapes["step"], rel=1e-4)
    assert shapes["block"] == pytest.approx(shapes["step"], rel=1e-4)
    assert [w for _, w in p.time_weights] == pytest.approx(shapes["step"], rel=1e-4)


@pytest.mark.parametrize("method", ["errors", "noise"])
def test_calibration_does_not_tell_its_user_to_calibrate(tiny_wan_pipe, caplog, method):
    """The calibration applies MixCache to the model it measures; the warning that the model has
    no profile of its own (whose advice is this command) is not repeated at every generation."""
    from mixcache.calibration import calibrate_errors

    with caplog.at_level(logging.WARNING, logger="mixcache"):
        if method == "errors":
            calibrate_errors(tiny_wan_pipe, ["a red circle"], num_inference_steps=6,
                             call_kwargs=_kwargs())  # fmt: skip
        else:
            calibrate_impact(tiny_wan_pipe, ["a red circle"], num_inference_steps=4,
                             noise_levels=(0.1,), call_kwargs=_kwargs())  # fmt: skip
    assert not [r for r in caplog.records if "mixcache calibrate" in r.getMessage()]
