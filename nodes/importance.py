"""Importance-stage nodes (category DiffuGAN/Importance): thin adapters over models/importance.py."""
from __future__ import annotations

from comfy_api.latest import io, ui

from ..models import importance as imp
from ._common import image_to_nchw, mask_to_n1hw, nchw_to_image, node_errors


class ImportancePreview(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANImportancePreview",
            display_name="DiffuGAN Importance Preview",
            category="DiffuGAN/Importance",
            description=(
                "Colours an importance MASK over the image (blue = little detail needed, red = most detail) so you "
                "can see where the refiner will spend its steps. A mask of another size is resized to the image."
            ),
            inputs=[
                io.Image.Input("image"),
                io.Mask.Input("importance", tooltip="Importance map in 0..1 (any stock MASK works)."),
                io.Float.Input("opacity", default=0.55, min=0.0, max=1.0, step=0.05,
                               tooltip="0 shows the image, 1 shows only the heatmap."),
            ],
            outputs=[io.Image.Output(display_name="preview")],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, image, importance, opacity) -> io.NodeOutput:
        with node_errors("DiffuGAN Importance Preview"):
            out = imp.heatmap_overlay(image_to_nchw(image), mask_to_n1hw(importance), opacity)
        out = nchw_to_image(out)
        return io.NodeOutput(out, ui=ui.PreviewImage(out, cls=cls))


NODES = [ImportancePreview]
