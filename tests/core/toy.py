"""An analytic toy transformer: every block adds a known function of the timestep.

Block i maps ``h -> h + (c_i + d_i * e) * t`` where ``t`` is the timestep and ``e`` the (scalar)
"text" of the branch, so a computed forward gives ``hL = h0 + t * sum_i (c_i + d_i e)`` and every
reuse (stored at step s) gives a different, exactly predictable number. With ``with_encoder``
blocks also return an updated encoder state, like HunyuanVideo's.
"""

from __future__ import annotations

import torch
from diffusers.models.cache_utils import CacheMixin

from mixcache.models import ModelSpec, register


class ToyBlock(torch.nn.Module):
    def __init__(self, c: float, d: float, with_encoder: bool) -> None:
        super().__init__()
        self.c, self.d, self.with_encoder = c, d, with_encoder

    def forward(self, hidden_states, encoder_hidden_states, temb, rotary_emb=None):
        e = encoder_hidden_states.mean(dim=(1, 2), keepdim=True)
        out = hidden_states + (self.c + self.d * e) * temb
        if self.with_encoder:
            return out, encoder_hidden_states + self.c
        return out


class ToyTransformer(torch.nn.Module, CacheMixin):
    """forward(hidden_states, timestep, encoder_hidden_states) -> (hL,)."""

    def __init__(
        self, cs: tuple[float, ...] = (1, 2, 3, 4, 5, 6), ds=None, with_encoder: bool = False
    ) -> None:
        super().__init__()
        ds = ds or tuple(0.5 * (i + 1) for i in range(len(cs)))
        self.blocks = torch.nn.ModuleList(
            ToyBlock(c, d, with_encoder) for c, d in zip(cs, ds, strict=True)
        )
        self.with_encoder = with_encoder
        self.cs, self.ds = cs, ds

    def forward(self, hidden_states, timestep, encoder_hidden_states, return_dict=False):
        temb = timestep.to(hidden_states.dtype).view(-1, 1, 1)
        h, enc = hidden_states, encoder_hidden_states
        for block in self.blocks:
            if self.with_encoder:
                h, enc = block(h, enc, temb)
            else:
                h = block(h, enc, temb)
        return (h,)


class ToyTransformerWithEncoder(ToyTransformer):
    def __init__(self, **kw) -> None:
        super().__init__(with_encoder=True, **kw)


register(
    ModelSpec(
        family="toy",
        class_names=("ToyTransformer",),
        load_classes=lambda: (ToyTransformerWithEncoder,),
        block_lists=("blocks",),
        returns_encoder=True,
    )
)
register(
    ModelSpec(
        family="toy",
        class_names=("ToyTransformer",),
        load_classes=lambda: (ToyTransformer,),
        block_lists=("blocks",),
    )
)

TIMESTEPS = (1000.0, 900.0, 800.0, 700.0, 600.0, 500.0, 400.0, 300.0, 200.0, 100.0)
E = {"cond": 1.0, "uncond": -1.0}


def make_inputs(batch: int = 1, tokens: int = 4, dim: int = 3):
    h0 = torch.arange(batch * tokens * dim, dtype=torch.float64).view(batch, tokens, dim) / 8
    return h0


def run_loop(model, branches=("cond", "uncond"), timesteps=TIMESTEPS, use_step_index=True, h0=None):
    """Call the model like WanPipeline does (same latent every step, for exact arithmetic).

    Returns {(step, branch): hL}.
    """
    h0 = make_inputs() if h0 is None else h0
    out = {}
    n = len(timesteps)
    for i, t in enumerate(timesteps):
        ts = torch.full((h0.shape[0],), t, dtype=torch.float64)
        for b in branches:
            enc = torch.full((h0.shape[0], 2, 3), E[b], dtype=torch.float64)
            kwargs = {"step_index": i, "num_inference_steps": n} if use_step_index else {}
            with model.cache_context(b, **kwargs):
                out[(i, b)] = model(hidden_states=h0, timestep=ts, encoder_hidden_states=enc)[0]
    model._reset_stateful_cache()
    return out


def full(model, h0, t, e):
    """hL of a computed forward."""
    return h0 + t * sum(c + d * e for c, d in zip(model.cs, model.ds, strict=True))


def partial(model, blocks, t, e):
    """Contribution of ``blocks`` at timestep t for text e."""
    return t * sum(model.cs[i] + model.ds[i] * e for i in blocks)
