"""Importance-stage nodes (category DiffuGAN/Importance): thin adapters over models/importance.py."""
from __future__ import annotations

import folder_paths
import torch
from comfy_api.latest import io, ui

from ..models import importance as imp
from ._common import (
    image_to_nchw,
    load_model_file,
    mask_to_n1hw,
    missing_model_message,
    nchw_to_image,
    node_errors,
    register_model_folder,
)
from ._ui import heatmap_overlay, parse_points, points_to_mask

FOLDER = "diffugan_importance"
register_model_folder(FOLDER, {".safetensors"})


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
                io.Image.Input("image", tooltip="The image the importance map is shown over."),
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
            out = heatmap_overlay(image_to_nchw(image, "image").clamp(0, 1), mask_to_n1hw(importance, "importance"),
                                  opacity)
        out = nchw_to_image(out)
        return io.NodeOutput(out, ui=ui.PreviewImage(out, cls=cls))


class AnalyticImportance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANImportanceAnalytic",
            display_name="DiffuGAN Importance (Analytic)",
            category="DiffuGAN/Importance",
            description=("Scores where detail matters from image statistics alone (no model): gradient, local "
                         "contrast, multi-scale high-frequency energy and edge density, smoothed into regions, "
                         "0..1 per image. Output is a stock MASK."),
            inputs=[
                io.Image.Input("image", tooltip="The image to score (any size)."),
                io.Float.Input("smoothing", default=1.0, min=0.0, max=8.0, step=0.25,
                               tooltip="Region size: 0 = per-pixel detail, higher = broader regions."),
            ],
            outputs=[io.Mask.Output(display_name="importance")],
        )

    @classmethod
    def execute(cls, image, smoothing) -> io.NodeOutput:
        with node_errors("DiffuGAN Importance (Analytic)"):
            m = imp.analytic_importance(image_to_nchw(image, "image").clamp(0, 1), smoothing)
        return io.NodeOutput(m[:, 0].to(image.device))


class MergeEmphasis(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANImportanceMerge",
            display_name="DiffuGAN Merge Emphasis",
            category="DiffuGAN/Importance",
            description=("Adds what you say matters to the importance map: a painted MASK (stock mask editor) and/or "
                         "clicked points as JSON [{\"x\": 120, \"y\": 80, \"radius\": 24, \"weight\": 1}] in "
                         "image pixels (Gaussian blobs). max raises only, add adds, multiply gates the score. After a "
                         "run this node shows the Importance Preview it feeds: click there to add a point (drag for "
                         "its radius), Shift+click for half the weight, Ctrl+drag to brush; they land in points."),
            inputs=[
                io.Mask.Input("importance",
                              tooltip="The importance map to add emphasis to (e.g. from Importance Analytic or "
                                      "Learned)."),
                io.Combo.Input("mode", options=list(imp.MERGE_MODES), default="max",
                               tooltip="max raises the score where you emphasised, never lowers it; add adds your "
                                       "emphasis; multiply keeps the score only where you emphasised."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="How much of your emphasis is merged in (0: none)."),
                io.Mask.Input("user_mask", optional=True, tooltip="Painted emphasis; resized if of another size."),
                io.String.Input("points", default="", multiline=True, optional=True,
                                tooltip="JSON list of clicks: x, y (pixels), radius (pixels, default 32), weight. "
                                        "Written by clicking on the picture below (or typed)."),
            ],
            outputs=[io.Mask.Output(display_name="importance")],
        )

    @classmethod
    def execute(cls, importance, mode, strength, user_mask=None, points="") -> io.NodeOutput:
        with node_errors("DiffuGAN Merge Emphasis"):
            score = mask_to_n1hw(importance, "importance")
            h, w = score.shape[-2:]
            user = points_to_mask(parse_points(points or ""), h, w)
            if user_mask is not None:
                painted = imp.match_mask(mask_to_n1hw(user_mask, "user_mask"), score.shape[0], h, w, name="user_mask")
                user = torch.maximum(user, painted)
            out = imp.merge_emphasis(score, user, mode, strength)
        # the mask's size, for the frontend's emphasis editor (points are in these pixels)
        return io.NodeOutput(out[:, 0], ui={"mask_size": [[h, w]]})


class ImportanceBudget(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANImportanceBudget",
            display_name="DiffuGAN Importance Budget",
            category="DiffuGAN/Importance",
            description=("Turns importance into a compute budget: K work levels (0 = least work, 1 = full work) "
                         "whose mean is the budget, e.g. 0.3 = 30 % of the full-image work. More important regions "
                         "never get less work, and the most important keep full work: a smaller budget takes work "
                         "from the least important first. The refiner reads this level map as its step map: the "
                         "transformer computes min_steps everywhere plus this share of the steps above them."),
            inputs=[
                io.Mask.Input("importance", tooltip="The importance map (0..1) to turn into work levels."),
                io.Int.Input("levels", default=4, min=2, max=64,
                             tooltip="Number of work levels (e.g. 4: a region gets 0, 1/3, 2/3 or all of the work)."),
                io.Float.Input("budget", default=0.3, min=0.0, max=1.0, step=0.05,
                               tooltip="Mean work over the image: 0.3 = 30 % of refining every pixel fully."),
            ],
            outputs=[io.Mask.Output(display_name="levels")],
        )

    @classmethod
    def execute(cls, importance, levels, budget) -> io.NodeOutput:
        with node_errors("DiffuGAN Importance Budget"):
            out = imp.budget_levels(mask_to_n1hw(importance, "importance"), levels, budget)
        return io.NodeOutput(out[:, 0])


class LearnedImportance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DiffuGANImportanceLearned",
            display_name="DiffuGAN Importance (Learned)",
            category="DiffuGAN/Importance",
            description=("Scores where detail matters with a small learned CNN (MobileNetV3-style, in "
                         "models/diffugan_importance), trained to predict where the refiner changes a draft most. "
                         "0..1 per image at the image size; a stock MASK like the analytic node's."),
            inputs=[
                io.Image.Input("image",
                               tooltip="The image to score (any size; the scorer runs at its own resolution)."),
                io.Combo.Input("scorer_name", options=folder_paths.get_filename_list(FOLDER),
                               tooltip="A scorer file in ComfyUI/models/diffugan_importance (the zoo ships one)."),
            ],
            outputs=[io.Mask.Output(display_name="importance")],
        )

    @classmethod
    def validate_inputs(cls, scorer_name) -> bool | str:
        return missing_model_message(FOLDER, scorer_name, "importance scorer")

    @classmethod
    def execute(cls, image, scorer_name) -> io.NodeOutput:
        import comfy.model_management as mm

        name = "DiffuGAN Importance (Learned)"
        scorer = load_model_file(FOLDER, scorer_name, name, "importance scorer", imp.load_scorer)  # tiny: no cache
        with node_errors(name):
            scorer = scorer.to(mm.get_torch_device())
            with torch.inference_mode():
                m = scorer.score(image_to_nchw(image, "image").clamp(0, 1))
        return io.NodeOutput(m[:, 0].float().cpu())


NODES = [AnalyticImportance, LearnedImportance, MergeEmphasis, ImportanceBudget, ImportancePreview]
