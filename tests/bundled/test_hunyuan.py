"""The bundled HunyuanVideo-architecture pipeline: HunyuanVideoPipeline's call pattern, round trip.

The call pattern is checked against diffusers' own ``HunyuanVideoPipeline`` (a tiny random one
from :mod:`mixcache_lab.tiny`): both pipelines' transformer calls are recorded (cache context names
and arguments, keyword names, tensor dtypes and ranks, timestep and guidance values) and must
be equal.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any

import numpy as np
import pytest
import torch

from mixcache_lab.bundled import load_bundled_pipeline
from mixcache_lab.bundled.hunyuan import MixCacheHunyuanT2VPipeline
from mixcache_lab.bundled.pipeline import cfg_call_kwargs
from mixcache_lab.tiny import make_tiny_hunyuan_pipeline, tiny_call_kwargs

STEPS = 3


@pytest.fixture(scope="module")
def tiny_pipe() -> MixCacheHunyuanT2VPipeline:
    """The bundled HunyuanVideo architecture, randomly initialised and shrunk (1 + 2 blocks)."""
    pipe = MixCacheHunyuanT2VPipeline.from_config_random(
        seed=1, num_layers=1, num_single_layers=2, num_heads=2, head_dim=16
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _describe(value: Any) -> Any:
    """What a call pattern compares of one argument: tensors by dtype, rank and batch."""
    if isinstance(value, torch.Tensor):
        return ("tensor", value.dtype, value.ndim, value.shape[0])
    return value


def _record_calls(pipe: Any, monkeypatch: pytest.MonkeyPatch, **call: Any) -> list[dict]:
    """Run ``pipe`` and return one entry per transformer call, in order."""
    transformer = pipe.transformer
    original = transformer.cache_context
    contexts: list[tuple[str, tuple, dict]] = []
    calls: list[dict] = []

    @contextlib.contextmanager
    def recording(name: str, *args: Any, **kwargs: Any):
        contexts.append((name, args, kwargs))
        with original(name, *args, **kwargs):
            yield

    def pre_hook(_mod: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        calls.append(
            {
                "context": contexts[-1] if contexts else None,
                "positional": len(args),
                "kwargs": {k: _describe(v) for k, v in kwargs.items()},
                "timestep": kwargs["timestep"].tolist(),
                "guidance": kwargs["guidance"].tolist(),
                # the values the model sees as valid text tokens (1 = attended)
                "mask_dtype": kwargs["encoder_attention_mask"].dtype,
            }
        )

    monkeypatch.setattr(transformer, "cache_context", recording)
    handle = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        pipe(generator=torch.Generator().manual_seed(0), output_type="latent", **call)
    finally:
        handle.remove()
        monkeypatch.setattr(transformer, "cache_context", original)
    assert len(contexts) == len(calls)  # every call in its own context
    return calls


@pytest.mark.parametrize(
    "cfg",
    [
        {"true_cfg_scale": 4.0, "negative_prompt": "a blue square moving up"},
        {"true_cfg_scale": 1.0, "negative_prompt": "a blue square moving up"},
        {"true_cfg_scale": 4.0, "negative_prompt": None},
    ],
    ids=["true-cfg", "scale-1", "no-negative-prompt"],
)
def test_transformer_is_called_like_hunyuan_video_pipeline(
    tiny_pipe: MixCacheHunyuanT2VPipeline, monkeypatch: pytest.MonkeyPatch, cfg: dict
) -> None:
    reference = make_tiny_hunyuan_pipeline(num_layers=1, num_single_layers=2)
    # The same scheduler on both sides, so timesteps can be compared value for value.
    monkeypatch.setattr(
        tiny_pipe, "scheduler", type(tiny_pipe.scheduler).from_config(reference.scheduler.config)
    )
    common = {"prompt": "a red circle moving left", "num_inference_steps": STEPS, **cfg}
    ref_call = tiny_call_kwargs("hunyuan", **common)
    ref_call.pop("output_type")
    theirs = _record_calls(reference, monkeypatch, **ref_call)
    ours = _record_calls(tiny_pipe, monkeypatch, **common, guidance_scale=6.0)
    names = [c["context"][0] for c in ours]
    with_cfg = cfg["true_cfg_scale"] > 1 and cfg["negative_prompt"] is not None
    assert names == (["cond", "uncond"] if with_cfg else ["cond"]) * STEPS
    assert all(c["context"][1:] == ((), {}) for c in ours)  # no step index in the context
    assert ours == theirs


def test_tokenizer_starts_with_bos_so_the_empty_prompt_has_a_token(
    tiny_pipe: MixCacheHunyuanT2VPipeline,
) -> None:
    ids = tiny_pipe.tokenizer(["a red circle", ""], padding="max_length", max_length=8)
    assert ids.input_ids[0][:4] == [2, 3, 4, 10] and ids.input_ids[1] == [2] + [0] * 7
    assert ids.attention_mask[1] == [1] + [0] * 7
    with torch.no_grad():
        emb, pooled, mask = tiny_pipe.encode_text(["a red circle moving left", ""])
    assert emb.shape == (2, 8, 64) and pooled.shape == (2, 64) and mask.shape == (2, 8)
    assert torch.isfinite(pooled).all()  # a mean over >= 1 token, never 0/0
    assert torch.allclose(pooled[1], emb[1, 0])  # the empty prompt pools its <s> alone
    frames = tiny_pipe("a red circle moving left", num_inference_steps=2).frames
    assert np.isfinite(frames).all()


def test_cfg_kwargs_are_true_cfg(tiny_pipe: MixCacheHunyuanT2VPipeline) -> None:
    assert cfg_call_kwargs(tiny_pipe, 3.0) == {"true_cfg_scale": 3.0}
    assert cfg_call_kwargs(object(), 3.0) == {"guidance_scale": 3.0}


def test_training_prediction_has_the_latent_shape_and_gradients(
    tiny_pipe: MixCacheHunyuanT2VPipeline,
) -> None:
    x = torch.randn(2, 24, 5, 16, 16)
    pred = tiny_pipe.training_prediction(x, torch.tensor([0.3, 0.9]), ["a red circle", ""])
    assert pred.shape == x.shape
    pred.square().mean().backward()
    grads = [p.grad for p in tiny_pipe.text_encoder.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)  # the text encoder learns too
    # a module-scoped fixture: leave no gradients behind
    for p in [*tiny_pipe.transformer.parameters(), *tiny_pipe.text_encoder.parameters()]:
        p.grad = None


def test_save_load_round_trip_is_bit_exact(tiny_pipe: MixCacheHunyuanT2VPipeline, tmp_path) -> None:
    tiny_pipe.save_pretrained(tmp_path, safe_serialization=True)
    index = json.loads((tmp_path / "model_index.json").read_text())
    assert index["_class_name"] == "MixCacheHunyuanT2VPipeline"
    assert index["transformer"] == ["diffusers", "HunyuanVideoTransformer3DModel"]
    assert not list(tmp_path.rglob("*.bin")) and list(tmp_path.rglob("*.safetensors"))
    for loaded in (
        load_bundled_pipeline(tmp_path),  # dispatches on model_index.json
        MixCacheHunyuanT2VPipeline.from_pretrained(tmp_path).to("cpu"),
    ):
        assert isinstance(loaded, MixCacheHunyuanT2VPipeline)
        for name in ("transformer", "text_encoder"):
            a, b = getattr(tiny_pipe, name).state_dict(), getattr(loaded, name).state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        loaded.transformer.eval()
        loaded.text_encoder.eval()
        loaded.set_progress_bar_config(disable=True)
        run = {"prompt": "a red circle moving left", "num_inference_steps": 2}
        a = tiny_pipe(generator=torch.Generator().manual_seed(0), **run).frames
        b = loaded(generator=torch.Generator().manual_seed(0), **run).frames
        assert np.array_equal(a, b)


def test_card_and_documented_command_of_the_hunyuan_model() -> None:
    import mixcache_lab.bundled.train as train
    from mixcache_lab.bundled import BUNDLED_MODELS

    entry = BUNDLED_MODELS["bundled-hunyuan"]
    # The one documented command is the one the "not trained yet" error names.
    doc = " ".join(train.__doc__.replace("\\\n", " ").split())
    assert entry.train_command in doc and entry.export_command in doc
    assert "--arch hunyuan --run-dir runs/bundled-hunyuan" in entry.train_command
    record = {
        "config": {**train.defaults_for("hunyuan"), "arch": "hunyuan", "steps": 100},
        "steps_trained": 100,
        "wall_minutes": 5.0,
        "threads": 2,
        "bf16_autocast": True,
        "final_loss_mean_last_100": 0.1,
    }
    card = train.model_card(record)
    assert card.startswith("# The bundled mixcache text-to-video model on the HunyuanVideo")
    assert "2 dual-stream + 14 single-stream blocks (16 in all)" in card
    assert "`python -m mixcache_lab.bundled.train train --arch hunyuan --run-dir " in card
    assert "--num-layers" not in card  # the architecture's own defaults are not spelled out
    assert "true CFG 5.0" in card
