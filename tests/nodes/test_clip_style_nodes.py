"""CLIP style nodes inside the real ComfyUI (in-process), on tiny open_clip checkpoints in open_clip's format."""
import os
from pathlib import Path

import pytest
import torch

from clip_files import write_hub_folder
from diffugan.models import clip_style as cs
from diffugan.models import stylegan as sg

SG2 = sg.StyleGANConfig("stylegan2", z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                        mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 512, "channel_max": 32})
HUB = os.path.join("laion", "CLIP-tiny-test", "open_clip_pytorch_model.bin")


@pytest.fixture(scope="module")
def files(comfy):
    import folder_paths

    clip_dir = Path(folder_paths.get_folder_paths("clip_style")[0])
    write_hub_folder(clip_dir / "laion" / "CLIP-tiny-test")
    write_hub_folder(clip_dir / "other" / "CLIP-tiny-test", seed=1)
    sg_dir = folder_paths.get_folder_paths("stylegan")[0]
    os.makedirs(sg_dir, exist_ok=True)
    torch.manual_seed(0)
    G = sg.Generator(SG2).eval().requires_grad_(False)
    sg.save_stylegan_safetensors(G, os.path.join(sg_dir, "style_g.safetensors"))
    return G


def _clip(run_node, name=HUB):
    return run_node("DiffuGANCLIPLoader", ckpt_name=name, architecture="auto").args[0]


def _encode(run_node, clip, text="a watercolor portrait | 1.0", **kw):
    kw.setdefault("image_weight", 1.0)
    kw.setdefault("negative_weight", 0.5)
    return run_node("DiffuGANStyleEncode", clip=clip, text=text, **kw).args[0]


def _draft(run_node, batch=2):
    g = run_node("DiffuGANStyleGANLoader", ckpt_name="style_g.safetensors").args[0]
    image, w = run_node("DiffuGANStyleGANGenerate", stylegan=g, seed=3, batch_size=batch, truncation_psi=0.7,
                        truncation_cutoff=0, noise_mode="const", class_label=0).args
    return g, image, w


def _inject(run_node, g, w, style, **kw):
    args = dict(mode="clip_guided", strength=1.0, steps=12, learning_rate=0.1, tether=0.1, noise_mode="const",
                noise_seed=0)
    args.update(kw)
    return run_node("DiffuGANStyleInject", stylegan=g, w=w, style=style, **args).args


def test_loader_lists_hub_layout_and_offers_architectures(comfy, files):
    import folder_paths

    assert HUB in folder_paths.get_filename_list("clip_style")
    spec = comfy.NODE_CLASS_MAPPINGS["DiffuGANCLIPLoader"].GET_NODE_INFO_V1()["input"]["required"]["architecture"]
    assert {"auto", "ViT-B-32", "ViT-L-14", "convnext_base", "DiffuGAN-CLIP-Demo"} <= set(spec[1]["options"])


def test_encode_text_images_and_negative(run_node, files):
    clip = _clip(run_node)
    model = clip.model
    text_only = _encode(run_node, clip, "a watercolor portrait")
    assert torch.allclose(text_only.embedding, model.encode_texts(["a watercolor portrait"])[0], atol=1e-6)
    assert text_only.clip == model.identity and text_only.parts[0]["kind"] == "text"
    rgba = torch.rand(2, 45, 29, 4, generator=torch.Generator().manual_seed(0))  # odd size, with alpha
    both = _encode(run_node, clip, "watercolor | 2\nwarm light", images=rgba, image_weight=0.5,
                   negative="photo", negative_weight=0.5)
    with torch.no_grad():
        t = model.encode_texts(["watercolor", "warm light"])
        i = model.encode_images(cs.to_rgb(rgba.movedim(-1, 1)))
        n = model.encode_texts(["photo"])
    expected = 2 * t[0] + t[1] + 0.5 * i[0] + 0.5 * i[1] - 0.5 * n[0]
    assert torch.allclose(both.embedding, expected / expected.norm(), atol=1e-5)
    assert [p["kind"] for p in both.parts] == ["text", "text", "image", "image", "negative"]


def test_encode_errors_are_clear(run_node, files):
    clip = _clip(run_node)
    with pytest.raises(ValueError, match="DiffuGAN Style Encode: nothing to encode: type at least one prompt"):
        _encode(run_node, clip, "  \n ")
    with pytest.raises(ValueError, match=r"'images' must be an IMAGE .* 1 to 4 channels; got shape \(1, 8, 8, 5\)"):
        _encode(run_node, clip, "x", images=torch.rand(1, 8, 8, 5))
    with pytest.raises(ValueError, match="'images' contains 192 NaN/inf values"):
        _encode(run_node, clip, "x", images=torch.full((1, 8, 8, 3), float("nan")))
    with pytest.raises(ValueError, match="has a weight but no prompt"):
        _encode(run_node, clip, "| 3")


def test_style_mix_slerps_and_refuses_another_clip(run_node, files):
    clip, other = _clip(run_node), _clip(run_node, os.path.join("other", "CLIP-tiny-test",
                                                                "open_clip_pytorch_model.bin"))
    a, b = _encode(run_node, clip, "red"), _encode(run_node, clip, "blue")
    mixed = run_node("DiffuGANStyleMix", style_a=a, style_b=b, mix=0.3).args[0]
    assert torch.allclose(mixed.embedding, cs.slerp(a.embedding, b.embedding, 0.3))
    with pytest.raises(ValueError, match="DiffuGAN Style Mix: the style was encoded by CLIP .* but 'style_a' uses"):
        run_node("DiffuGANStyleMix", style_a=a, style_b=_encode(run_node, other, "blue"), mix=0.5)


def test_clip_guided_inject_raises_similarity_and_strength_zero_is_identity(run_node, files):
    clip = _clip(run_node)
    style = _encode(run_node, clip, "a watercolor portrait with warm light")
    g, image, w = _draft(run_node)
    same_image, same_w = _inject(run_node, g, w, style, strength=0.0, clip=clip)
    assert torch.equal(same_w["ws"], w["ws"]) and torch.equal(same_image, image)
    out_image, out_w = _inject(run_node, g, w, style, clip=clip)
    assert out_image.shape == image.shape and out_w["model"] == w["model"]
    G = g.generator
    with torch.no_grad():
        before = cs.clip_similarity(G, clip.model, w["ws"], style.embedding)
        after = cs.clip_similarity(G, clip.model, out_w["ws"], style.embedding)
    assert (after > before + 0.02).all(), (before, after)
    half = _inject(run_node, g, w, style, clip=clip, strength=0.5)[1]["ws"]
    assert torch.allclose(half, w["ws"] + 0.5 * (out_w["ws"] - w["ws"]), atol=1e-5)


def test_inject_refuses_missing_or_mismatched_inputs(run_node, files):
    clip = _clip(run_node)
    other = _clip(run_node, os.path.join("other", "CLIP-tiny-test", "open_clip_pytorch_model.bin"))
    style = _encode(run_node, clip, "x")
    g, _, w = _draft(run_node, 1)
    with pytest.raises(ValueError, match="mode clip_guided needs the 'clip' input"):
        _inject(run_node, g, w, style)
    with pytest.raises(ValueError, match="the style was encoded by CLIP .* but the 'clip' input uses CLIP"):
        _inject(run_node, g, w, style, clip=other)
    with pytest.raises(ValueError, match="mode mapper needs a 'mapper' file .* 'diffugan_mappers' model folder"):
        _inject(run_node, g, w, style, mode="mapper")


def test_mapper_mode_applies_strength_times_the_mapped_offset(run_node, files):
    import folder_paths

    clip = _clip(run_node)
    style = _encode(run_node, clip, "warm light")
    g, _, w = _draft(run_node)
    G = g.generator
    mapper = cs.StyleMapper(cs.MapperConfig(clip_dim=32, w_dim=G.w_dim, num_ws=G.num_ws, hidden=32, layers=2,
                                            clip=clip.model.identity, generator=g.identity))
    torch.nn.init.normal_(mapper.out.weight, std=0.05)
    folder = folder_paths.get_folder_paths("diffugan_mappers")[0]
    os.makedirs(folder, exist_ok=True)
    cs.save_mapper(mapper, os.path.join(folder, "warm.safetensors"))
    _, out = _inject(run_node, g, w, style, mode="mapper", mapper="warm.safetensors", strength=2.0)
    with torch.no_grad():
        expected = w["ws"] + 2.0 * mapper(style.embedding, w["ws"])
    assert torch.allclose(out["ws"], expected, atol=1e-6)
    wrong = cs.StyleMapper(cs.MapperConfig(clip_dim=32, w_dim=8, num_ws=G.num_ws, clip=clip.model.identity))
    cs.save_mapper(wrong, os.path.join(folder, "wrong.safetensors"))
    with pytest.raises(ValueError, match="mapper 'wrong.safetensors' was trained for W\\+"):
        _inject(run_node, g, w, style, mode="mapper", mapper="wrong.safetensors")
