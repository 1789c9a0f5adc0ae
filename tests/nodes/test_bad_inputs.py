"""Bad inputs across every node that takes pictures, masks, latents, text or seeds, inside the real ComfyUI.

A table of bad values per input kind, run against every such input of every node, with the node's other inputs
valid (the zoo's models). Each run must either refuse with a ValueError that names the input (the executor shows it
on the node), or give the documented behaviour (README, "Inputs"): grey images are repeated to RGB, an alpha
channel is dropped (composited over white for the CLIP), any image or mask size works (maps are resized to the
picture), a batch-1 mask serves a whole batch, values outside 0..1 are clipped. Anything else (a raw RuntimeError,
an IndexError, NaN in an output) fails. That the server keeps serving after such an error is checked end to end in
tests/e2e/test_robustness.py.
"""
from __future__ import annotations

import math

import pytest
import torch

NAN, INF = float("nan"), float("inf")


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _with(value, at, t):
    t = t.clone()
    t.view(-1)[at] = value
    return t


# value -> "refuse" (must be a ValueError naming the input) or "accept" (must work)
BAD_IMAGES = {
    "empty batch": (torch.zeros(0, 16, 16, 3), "refuse"),
    "zero height": (torch.zeros(1, 0, 16, 3), "refuse"),
    "five channels": (_rand(1, 16, 16, 5), "refuse"),
    "NaN": (_with(NAN, 5, _rand(1, 16, 16, 3)), "refuse"),
    "inf": (_with(INF, 5, _rand(1, 16, 16, 3)), "refuse"),
    "a MASK": (_rand(1, 16, 16), "refuse"),
    "5-d": (_rand(1, 1, 16, 16, 3), "refuse"),
    "not a tensor": ("image.png", "refuse"),
    "1x1": (_rand(3, 1, 1, 3), "accept"),
    "odd size": (_rand(3, 33, 17, 3), "accept"),
    "grey": (_rand(3, 24, 24, 1), "accept"),
    "alpha": (_rand(3, 24, 24, 4), "accept"),
    "grey + alpha": (_rand(3, 24, 24, 2), "accept"),
    "out of 0..1": (_rand(3, 24, 24, 3) * 40 - 20, "accept"),
}
BAD_MASKS = {
    "empty batch": (torch.zeros(0, 16, 16), "refuse"),
    "zero size": (torch.zeros(1, 0, 0), "refuse"),
    "NaN": (_with(NAN, 3, _rand(1, 16, 16)), "refuse"),
    "inf": (_with(-INF, 3, _rand(1, 16, 16)), "refuse"),
    "an IMAGE": (_rand(1, 16, 16, 3), "refuse"),
    "not a tensor": (0.5, "refuse"),
    "batch 2 against 3": (_rand(2, 24, 24), "refuse where another input has batch 3"),
    "1x1": (_rand(1, 1, 1), "accept"),
    "odd size": (_rand(1, 37, 11), "accept"),
    "2-d": (_rand(24, 24), "accept"),
    "B,1,H,W": (_rand(1, 1, 24, 24), "accept"),
    "out of 0..1": (_rand(1, 24, 24) * 10 - 5, "accept"),
}


# mask inputs with no other batched input beside them at the node (the Region Sampler's latent comes later, where
# a mismatch is refused by the DiT Refine case below; Merge's user_mask is batch 1)
ALONE = {("DiffuGANImportanceBudget", "importance"), ("DiffuGANRegionSampler", "importance"),
         ("DiffuGANImportanceMerge", "importance")}


@pytest.fixture(scope="module")
def zoo(run_node):
    """The zoo's models through our own loader nodes, and valid inputs made from them."""
    clip = run_node("DiffuGANCLIPLoader", ckpt_name="diffugan-emoji-clip.safetensors", architecture="auto").args[0]
    model = run_node("DiffuGANDiTLoader", ckpt_name="diffugan-emoji-dit.safetensors", num_heads=0).args[0]
    controlnet = run_node("DiffuGANControlNetLoader", controlnet_name="diffugan-emoji-controlnet.safetensors").args[0]
    stylegan = run_node("DiffuGANStyleGANLoader", ckpt_name="diffugan-emoji-stylegan.safetensors").args[0]
    positive, negative = run_node("DiffuGANDiTConditioning", class_label=0).args
    import comfy.sd
    import comfy.utils
    import folder_paths

    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(folder_paths.get_full_path_or_raise(
        "vae", "diffugan-emoji-vae-256.safetensors")))  # as the stock Load VAE gives it
    return dict(clip=clip, model=model, controlnet=controlnet, stylegan=stylegan, positive=positive,
                negative=negative, vae=vae)


def _nodes(zoo) -> dict[str, tuple[dict, list[str], list[str]]]:
    """node id -> (valid inputs, IMAGE inputs, MASK inputs). The picture is batch 3 so batch rules are exercised."""
    image, mask = _rand(3, 32, 32, 3, seed=1), _rand(3, 32, 32, seed=2)
    latent = {"samples": torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(3))}
    small_latent = {"samples": torch.randn(3, 4, 4, 4, generator=torch.Generator().manual_seed(5))}  # 32 px
    refine = dict(model=zoo["model"], positive=zoo["positive"], negative=zoo["negative"], latent=latent, seed=1,
                  max_steps=2, strength=0.3, cfg=2.0, importance=_rand(3, 128, 128, seed=4), min_steps=0)
    control = dict(model=zoo["model"], controlnet=zoo["controlnet"], image=image, strength=1.0, budget=0.5,
                   importance=mask)
    return {
        "DiffuGANImportanceAnalytic": (dict(image=image, smoothing=1.0), ["image"], []),
        "DiffuGANImportanceLearned": (dict(image=image, scorer_name="diffugan-emoji-scorer.safetensors"),
                                      ["image"], []),
        "DiffuGANImportancePreview": (dict(image=image, importance=mask, opacity=0.5), ["image"], ["importance"]),
        "DiffuGANImportanceMerge": (dict(importance=mask, mode="max", strength=1.0, user_mask=mask[:1], points=""),
                                    [], ["importance", "user_mask"]),
        "DiffuGANImportanceBudget": (dict(importance=mask, levels=4, budget=0.3), [], ["importance"]),
        "DiffuGANEdges": (dict(image=image, low_threshold=0.1, high_threshold=0.2), ["image"], []),
        "DiffuGANStyleEncode": (dict(clip=zoo["clip"], text="a cat", image_weight=1.0, negative_weight=0.5,
                                     images=image, negative=""), ["images"], []),
        "DiffuGANControlNetApply": (control, ["image"], ["importance"]),
        "DiffuGANRegionSampler": (dict(importance=mask, min_steps=0, border=0, dense_every=0), [], ["importance"]),
        "DiffuGANDiTRefine": (refine, [], ["importance"]),
        "DiffuGANKeepCoarse": (dict(image=image, reference=image, coarse_px=1), ["image", "reference"], []),
        "DiffuGANDecodeRefinement": (dict(vae=zoo["vae"], refined=small_latent, start=small_latent, original=image),
                                     ["original"], []),
    }


def _outputs_finite(out) -> bool:
    def finite(v):
        if isinstance(v, torch.Tensor):
            return bool(torch.isfinite(v).all()) if v.is_floating_point() else True
        if isinstance(v, dict):
            return all(finite(x) for x in v.values())
        if isinstance(v, (list, tuple)):
            return all(finite(x) for x in v)
        return True

    return all(finite(v) for v in out.args)


def _run_case(run_node, node_id, inputs, name, value, expect):
    try:
        out = run_node(node_id, **{**inputs, name: value})
    except ValueError as e:
        msg = str(e)
        if f"'{name}'" not in msg:
            return f"refused without naming '{name}': {msg[:200]}"
        if expect == "accept":
            return f"refused a value the README says works: {msg[:200]}"
        return None
    except Exception as e:  # what would reach the user raw
        return f"raised {type(e).__name__}: {str(e)[:200]}"
    if expect.startswith("refuse"):
        return "accepted a value it must refuse"
    if not _outputs_finite(out):
        return "gave non-finite output"
    return None


def test_every_picture_and_mask_input_refuses_clearly_or_works(run_node, zoo):
    problems = []
    for node_id, (inputs, images, masks) in _nodes(zoo).items():
        for name, table in [(n, BAD_IMAGES) for n in images] + [(n, BAD_MASKS) for n in masks]:
            for label, (value, expect) in table.items():
                if expect.startswith("refuse where") and (node_id, name) in ALONE:
                    expect = "accept"  # no other input of batch 3 to disagree with
                problem = _run_case(run_node, node_id, inputs, name, value, expect)
                if problem:
                    problems.append(f"{node_id}.{name} <- {label}: {problem}")
    assert not problems, "\n".join(problems)


def test_latent_inputs(run_node, zoo):
    inputs = _nodes(zoo)["DiffuGANDiTRefine"][0]
    bad = {
        "empty batch": {"samples": torch.zeros(0, 4, 16, 16)},
        "NaN": {"samples": _with(NAN, 0, torch.randn(3, 4, 16, 16))},
        "16 channels (an SD3/Flux latent)": {"samples": torch.randn(3, 16, 16, 16)},
        "no samples": {"noise_mask": torch.ones(1, 16, 16)},
        "not a latent": torch.randn(3, 4, 16, 16),
    }
    problems = [f"latent <- {label}: {p}" for label, value in bad.items()
                if (p := _run_case(run_node, "DiffuGANDiTRefine", inputs, "latent", value, "refuse"))]
    odd = {"samples": torch.randn(3, 4, 9, 13)}  # sides the DiT's patches do not tile: refused, saying the size
    problems += [f"latent <- odd size: {p}" for p in [_run_case(run_node, "DiffuGANDiTRefine", inputs, "latent",
                                                                  odd, "refuse")] if p]
    wide = {"samples": torch.randn(3, 4, 8, 24)}  # non-square works (the importance map is resized)
    problems += [f"latent <- 8x24: {p}" for p in [_run_case(run_node, "DiffuGANDiTRefine", inputs, "latent",
                                                              wide, "accept")] if p]
    assert not problems, "\n".join(problems)


def test_text_seeds_and_slider_extremes(run_node, zoo):
    inputs = _nodes(zoo)
    cases = [
        ("DiffuGANStyleEncode", "text", "", "accept"),  # images still connected
        ("DiffuGANStyleEncode", "text", "cat " * 20_000, "accept"),  # tokenizer truncates
        ("DiffuGANStyleEncode", "text", "a | b | 2 | 0x", "accept"),
        ("DiffuGANStyleEncode", "text", "\x00\ud7ff😀" * 50, "accept"),
        ("DiffuGANDiTRefine", "seed", 2**64 - 1, "accept"),
        ("DiffuGANDiTRefine", "seed", 0, "accept"),
        ("DiffuGANDiTRefine", "max_steps", 1, "accept"),
        ("DiffuGANDiTRefine", "strength", 0.0, "accept"),
        ("DiffuGANDiTRefine", "strength", 1.0, "accept"),
        ("DiffuGANDiTRefine", "cfg", 30.0, "accept"),
        ("DiffuGANDiTRefine", "min_steps", 1000, "accept"),
        ("DiffuGANImportanceBudget", "budget", 0.0, "accept"),
        ("DiffuGANImportanceBudget", "budget", 1.0, "accept"),
        ("DiffuGANImportanceBudget", "levels", 64, "accept"),
        ("DiffuGANImportanceAnalytic", "smoothing", 8.0, "accept"),
        ("DiffuGANImportanceAnalytic", "smoothing", 0.0, "accept"),
        ("DiffuGANEdges", "low_threshold", 0.0, "accept"),
        ("DiffuGANEdges", "low_threshold", 1.0, "refuse"),  # above high_threshold
        ("DiffuGANImportanceMerge", "points", '[{"x": 1e308, "y": -1e308, "radius": 4}]', "accept"),
        ("DiffuGANImportanceMerge", "points", '[{"x": 1, "y": 2, "radius": 0}]', "refuse"),
        ("DiffuGANImportanceMerge", "points", '[{"x": 1, "y": 2, "radius": Infinity}]', "refuse"),
        ("DiffuGANImportanceMerge", "points", '[{"x": "a", "y": 2}]', "refuse"),
        ("DiffuGANImportanceMerge", "points", "[" * 10_000, "refuse"),
        ("DiffuGANControlNetApply", "budget", 0.01, "accept"),
        ("DiffuGANControlNetApply", "strength", 4.0, "accept"),
    ]
    problems = []
    for node_id, name, value, expect in cases:
        p = _run_case(run_node, node_id, inputs[node_id][0], name, value, expect)
        if p:
            problems.append(f"{node_id}.{name} <- {str(value)[:40]!r}: {p}")
    # both texts empty and no images: nothing to encode, said on 'text'
    p = _run_case(run_node, "DiffuGANStyleEncode", {**inputs["DiffuGANStyleEncode"][0], "images": None}, "text", "",
                  "refuse")
    problems += [f"StyleEncode with nothing: {p}"] if p else []
    # StyleGAN Generate at the seed limits and the largest batch
    for seed in (0, 2**32 - 1):
        out = run_node("DiffuGANStyleGANGenerate", stylegan=zoo["stylegan"], seed=seed, batch_size=2,
                       truncation_psi=0.7, truncation_cutoff=0, noise_mode="const", class_label=0)
        assert math.isfinite(float(out.args[0].sum()))
    assert not problems, "\n".join(problems)


def test_models_of_the_wrong_kind(run_node, zoo):
    """A MODEL that is not a DiffuGAN DiT, wired where one is needed, is refused naming the input."""
    import comfy.model_patcher

    stranger = comfy.model_patcher.ModelPatcher(torch.nn.Linear(2, 2), torch.device("cpu"), torch.device("cpu"))
    inputs = _nodes(zoo)
    problems = []
    for node_id in ("DiffuGANControlNetApply", "DiffuGANDiTRefine"):
        p = _run_case(run_node, node_id, inputs[node_id][0], "model", stranger, "refuse")
        if p:
            problems.append(f"{node_id}.model <- a Linear: {p}")
    p = _run_case(run_node, "DiffuGANDiTRefine", inputs["DiffuGANDiTRefine"][0], "positive",
                  [[torch.zeros(1, 77, 768), {"pooled_output": torch.zeros(1, 768)}]], "refuse")
    if p:
        problems.append(f"DiTRefine.positive <- SD1 text conditioning: {p}")
    assert not problems, "\n".join(problems)


def test_w_latent_inputs(run_node, zoo):
    """W+ latents wired into the StyleGAN nodes: from another generator, malformed, NaN, or disagreeing batches."""
    G = zoo["stylegan"]
    image, w = run_node("DiffuGANStyleGANGenerate", stylegan=G, seed=3, batch_size=2, truncation_psi=0.7,
                        truncation_cutoff=0, noise_mode="const", class_label=0).args
    bad = {
        "another generator's shape": ({**w, "ws": torch.zeros(2, w["ws"].shape[1] + 1, 7), "model": "other #1"},
                                      "refuse"),
        "a bare tensor": (w["ws"], "refuse"),
        "an IMAGE": (image, "refuse"),
        "NaN": ({**w, "ws": _with(NAN, 0, w["ws"])}, "refuse"),
        "empty batch": ({**w, "ws": w["ws"][:0]}, "refuse"),
        "from another file of the same architecture": ({**w, "model": "a fine-tune #123"}, "accept"),
    }
    problems = []
    for label, (value, expect) in bad.items():
        p = _run_case(run_node, "DiffuGANStyleGANFromW", dict(stylegan=G, w=w, noise_mode="const", noise_seed=0),
                      "w", value, expect)
        if p:
            problems.append(f"FromW.w <- {label}: {p}")
    mix = dict(stylegan=G, w_a=w, w_b=w, layer_start=0, layer_end=4, noise_mode="const", noise_seed=0)
    three = run_node("DiffuGANStyleGANGenerate", stylegan=G, seed=4, batch_size=3, truncation_psi=0.7,
                     truncation_cutoff=0, noise_mode="const", class_label=0).args[1]
    for name, value, expect in [("w_b", three, "refuse"), ("w_b", {**w, "ws": w["ws"][:1]}, "accept"),
                                ("layer_end", 64, "refuse"), ("w_a", NAN, "refuse")]:
        p = _run_case(run_node, "DiffuGANStyleGANMix", mix, name, value, expect)
        if p:
            problems.append(f"Mix.{name} <- {str(value)[:30]}: {p}")
    assert not problems, "\n".join(problems)
