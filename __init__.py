"""DiffuGAN: coarse-to-fine image generation for ComfyUI (StyleGAN draft -> importance map -> DiT refiner).

Importing this package is cheap: it loads no weights and imports no node code until ComfyUI asks for the
node list through `comfy_entrypoint` (ComfyUI's V3 extension API).
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import DiffuGANExtension

    return DiffuGANExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
