"""Shared fixtures: tiny real diffusers pipelines built offline (see ``mixcache_lab.tiny``)."""

from __future__ import annotations

import os

import pytest
import torch

# Two cores are shared by the xdist workers: one intra-op thread each avoids oversubscription.
torch.set_num_threads(int(os.environ.get("MIXCACHE_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_wan_pipe():
    """A tiny random ``WanPipeline`` (6 blocks). Session-scoped: tests must leave it unhooked."""
    from mixcache_lab.tiny import make_tiny_wan_pipeline

    return make_tiny_wan_pipeline()


@pytest.fixture(scope="session")
def tiny_hunyuan_pipe():
    """A tiny random ``HunyuanVideoPipeline`` (2 dual + 4 single blocks). Leave it unhooked."""
    from mixcache_lab.tiny import make_tiny_hunyuan_pipeline

    return make_tiny_hunyuan_pipeline()
