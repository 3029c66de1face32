"""cfg reuse on batched-CFG pipelines (one forward of ``[uncond, cond]`` per step).

A cfg step runs the transformer on the cond half of the batch only and rebuilds the uncond half
as ``out_cond(t) - Δout``, Δout stored at the last whole-batch compute. On an analytic toy whose
cond - uncond difference is the same at every step that rebuild is exact; on the tiny real
CogVideoX, LTX-Video and Mochi pipelines the policy chooses it and saves half a forward.
"""

from __future__ import annotations

import pytest
import torch
from diffusers.models.cache_utils import CacheMixin
from test_pipelines import Applied, rel_err
from tiny_configs import TINY_FAST
from toy import E, ToyBlock, ToyTransformer

from mixcache import MixCacheConfig, apply_mixcache
from mixcache.models import BatchLayout, ModelSpec, register
from mixcache_lab.tiny import TINY_PIPELINES, tiny_call_kwargs

CFG_ONLY = TINY_FAST.replace(granularities=("cfg",), step_probe="none")


class ShiftBlock(ToyBlock):
    """``h -> h + c t + d e``: cond and uncond differ by ``d (e_c - e_u)``, whatever the step."""

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb=None):
        e = encoder_hidden_states.mean(dim=(1, 2), keepdim=True)
        return hidden_states + self.c * temb + self.d * e


class BatchedToy(torch.nn.Module, CacheMixin):
    """The toy transformer of ``toy.py`` with :class:`ShiftBlock` blocks, as its own class (a
    subclass would match the toy's registered spec first, which has no batch layout)."""

    forward = ToyTransformer.forward

    def __init__(self, block: type[ToyBlock] = ShiftBlock) -> None:
        super().__init__()
        self.cs, self.ds = (1, 2, 3, 4, 5, 6), tuple(0.5 * (i + 1) for i in range(6))
        self.with_encoder = False
        self.blocks = torch.nn.ModuleList(
            block(c, d, False) for c, d in zip(self.cs, self.ds, strict=True)
        )


register(
    ModelSpec(
        family="toy",
        class_names=("BatchedToy",),
        load_classes=lambda: (BatchedToy,),
        block_lists=("blocks",),
        batch_layout=BatchLayout(batch_args=("hidden_states", "encoder_hidden_states", "timestep")),
    )
)


class BatchedToyPipeline:
    """Calls the toy the way CogVideoXPipeline calls its transformer: ``[uncond, cond]``."""

    do_classifier_free_guidance = True

    def __init__(self, block: type[ToyBlock] = ShiftBlock) -> None:
        self.transformer = BatchedToy(block)

    def __call__(self, steps: int = 8, videos: int = 1, guidance: float = 5.0) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(videos, 4, 3, generator=g)
        enc = torch.cat(
            [torch.full((videos, 2, 3), E["uncond"]), torch.full((videos, 2, 3), E["cond"])]
        )
        for i in range(steps):
            t = torch.tensor(1.0 - i / steps).expand(2 * videos)
            with self.transformer.cache_context(
                "cond_uncond", step_index=i, num_inference_steps=steps
            ):
                out = self.transformer(torch.cat([x, x]), t, enc)[0]
            uncond, cond = out.chunk(2)
            x = x + 0.1 * (uncond + guidance * (cond - uncond) - x)
        self.transformer._reset_stateful_cache()
        return x


@pytest.mark.parametrize("videos", [1, 2])
def test_cfg_rebuild_is_exact_when_the_difference_is_constant(videos):
    pipe = BatchedToyPipeline()
    ref = pipe(videos=videos)
    handle = apply_mixcache(pipe, CFG_ONLY)
    ctrl = handle.controllers["transformer"]
    calls: list[int] = []
    # What block 0 really runs on (the transformer's own pre-hook sees the caller's batch).
    pipe.transformer.blocks[0].register_forward_pre_hook(lambda m, a: calls.append(a[0].shape[0]))
    ctrl.force = lambda s: "cfg" if s >= 2 else None  # every step after two whole computes
    out = pipe(videos=videos)
    stats = handle.stats()
    handle.remove()
    assert torch.allclose(out, ref, rtol=1e-6, atol=1e-6), (out - ref).abs().max()
    # Half the batch ran at the cfg steps: the cond half, the second (the pipeline puts uncond
    # first; taking the first half would rebuild cond from uncond and be far off).
    assert calls == [2 * videos] * 2 + [videos] * 6
    assert stats.action_counts["cfg"] == 6
    assert stats.compute_fraction == pytest.approx((2 * 1.0 + 6 * 0.5) / 8)


def test_cfg_rebuild_is_wrong_when_the_difference_changes():
    # The toy of the other tests (difference proportional to t): the rebuild is approximate, so
    # the exactness above is the constant difference, not a reuse that does nothing.
    pipe = BatchedToyPipeline(ToyBlock)
    ref = pipe()
    with Applied(pipe, CFG_ONLY) as handle:
        handle.controllers["transformer"].force = lambda s: "cfg" if s >= 2 else None
        out = pipe()
    assert rel_err(out, ref) > 1e-3


def test_without_guidance_the_batch_is_not_split():
    pipe = BatchedToyPipeline()
    pipe.do_classifier_free_guidance = False
    with Applied(pipe, CFG_ONLY) as handle:
        handle.controllers["transformer"].force = lambda s: "cfg" if s >= 2 else None
        pipe()
        stats = handle.stats()
    assert stats.action_counts["cfg"] == 0 and "cfg" in stats.unavailable


BATCHED = [f for f, entry in TINY_PIPELINES.items() if entry.cfg_batched]


def _generate(pipe, family, steps=10, **kw):
    kwargs = tiny_call_kwargs(family, num_inference_steps=steps, **kw)
    out = pipe(
        prompt="a red circle moving right", generator=torch.Generator().manual_seed(0), **kwargs
    )
    return out.frames


@pytest.fixture(scope="module")
def pipes():
    built: dict[str, object] = {}

    def get(name: str):
        if name not in built:
            built[name] = TINY_PIPELINES[name].build()
        return built[name]

    return get


@pytest.mark.parametrize("family", BATCHED)
def test_policy_reuses_the_uncond_half_on_batched_pipelines(pipes, family):
    pipe = pipes(family)
    ref = _generate(pipe, family)
    with Applied(pipe, CFG_ONLY.replace(dry_run=True)):
        assert torch.equal(_generate(pipe, family), ref), "reuse forbidden must be bit-identical"
    with Applied(pipe, CFG_ONLY) as handle:
        out = [_generate(pipe, family) for _ in range(2)]
        stats = handle.stats()
    assert stats.action_counts["cfg"] > 0 and "cfg" not in stats.unavailable, stats.summary()
    assert stats.compute_fraction < 1
    assert torch.equal(out[0], out[1]) and not torch.equal(out[0], ref)
    assert rel_err(out[0], ref) < 0.2
    assert torch.equal(_generate(pipe, family), ref), "apply -> remove must be bit-exact"


@pytest.mark.parametrize(
    ("family", "extra"),
    [
        # LTX-Video repeats each prompt; CogVideoX forces num_videos_per_prompt=1, so two prompts.
        ("ltx", {"num_videos_per_prompt": 2}),
        # LTXConditionPipeline doubles its video_coords with the latents: sliced with them.
        ("ltx_condition", {"num_videos_per_prompt": 2}),
        ("cogvideox", {"prompt": ["a red circle moving right", "a blue square moving left"],
                       "negative_prompt": ["blurry low quality video"] * 2}),
    ],
)  # fmt: skip
def test_batched_cfg_with_more_than_one_video_per_call(pipes, family, extra):
    pipe = pipes(family)
    kwargs = tiny_call_kwargs(family, num_inference_steps=10) | extra
    kwargs.setdefault("prompt", "a red circle moving right")

    def run():
        return pipe(generator=torch.Generator().manual_seed(0), **kwargs).frames

    ref = run()
    with Applied(pipe, CFG_ONLY) as handle:
        out = run()
        stats = handle.stats()
    assert out.shape == ref.shape and out.shape[0] == 2
    assert stats.action_counts["cfg"] > 0 and rel_err(out, ref) < 0.2
    # Each video keeps its own uncond half: the halves are not mixed across the batch.
    for i in range(2):
        assert rel_err(out[i], ref[i]) < 0.2


def test_the_speed_budget_counts_a_cfg_step_as_half_a_step(pipes):
    pipe = pipes("cogvideox")
    with Applied(
        pipe,
        MixCacheConfig.preset(
            "paper", block_speedup=1.5, granularities=("cfg",), step_probe="none"
        ),
    ) as handle:
        _generate(pipe, "cogvideox", steps=20)
        stats = handle.stats()
    # cfg saves half a step at most, so x1.5 (2/3 of the compute) needs 2/3 of the steps as
    # cfg steps; the ledger counts each as half of a step's 2 x L blocks.
    assert stats.action_counts["cfg"] > 0
    assert stats.compute_fraction == pytest.approx(1 / 1.5, abs=0.05 / 1.5 + 0.026)
