"""The pack imported inside the real (pinned) ComfyUI, in this process, the way ComfyUI loads custom nodes."""
from __future__ import annotations

import asyncio
import sys

import pytest

from devkit.harness import make_base_dir, require_comfyui


@pytest.fixture(scope="session")
def comfy(tmp_path_factory):
    """Returns ComfyUI's `nodes` module after it loaded the pack from custom_nodes/DiffuGAN."""
    comfy_dir = require_comfyui()
    base = make_base_dir(tmp_path_factory.mktemp("comfy_inproc"))
    sys.path.insert(0, str(comfy_dir))
    from comfy.cli_args import args

    args.cpu = True
    args.base_directory = str(base)
    import nodes as comfy_nodes

    pack_path = str(base / "custom_nodes" / "DiffuGAN")
    loaded = asyncio.run(comfy_nodes.load_custom_node(pack_path))
    assert loaded, "ComfyUI could not load the pack (see the warnings logged above)"
    return comfy_nodes


@pytest.fixture(scope="session")
def pack_node_ids(comfy):
    """IDs of every node the pack's nodes/ package lists, as loaded by ComfyUI (module keyed by its path)."""
    pack = next(m for name, m in sys.modules.items() if name.endswith("custom_nodes/DiffuGAN"))
    return [n.GET_SCHEMA().node_id for n in pack.nodes.all_nodes()]


@pytest.fixture(scope="session")
def run_node(comfy):
    """Execute one of our nodes the way ComfyUI's executor does (class clone, normalized V3 call)."""

    def run(node_id: str, **inputs):
        cls = comfy.NODE_CLASS_MAPPINGS[node_id]
        clone = cls.PREPARE_CLASS_CLONE({})
        return clone.EXECUTE_NORMALIZED(**inputs)

    return run
