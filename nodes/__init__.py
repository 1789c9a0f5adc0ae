"""ComfyUI adapters, one file per stage. The only part of the pack that imports ComfyUI.

Node style: ComfyUI's V3 node API (`comfy_api.latest`), which the pinned ComfyUI 0.3.75 supports fully (its own
core nodes such as Canny and DifferentialDiffusion use it). Every node of every stage file is listed here.
"""
from __future__ import annotations

from comfy_api.latest import ComfyExtension, io

from . import clip_style, dit, film_unet, ganformer, importance, style_inject, stylegan, var, vit_controlnet
from ._common import add_zoo_folder, install_example_inputs

STAGES = [clip_style, stylegan, ganformer, var, style_inject, importance, vit_controlnet, dit, film_unet]
add_zoo_folder("vae")  # the zoo's VAE (TAESD layout) for the stock VAELoader


def all_nodes() -> list[type[io.ComfyNode]]:
    return [node for stage in STAGES for node in stage.NODES]


class DiffuGANExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        # called once as ComfyUI loads the pack (ComfyUI 0.3.75 never calls on_load): the shipped workflows'
        # example images into ComfyUI's input folder
        install_example_inputs()
        return all_nodes()
