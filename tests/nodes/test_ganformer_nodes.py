"""GANformer nodes inside the real ComfyUI (in-process), on small snapshots written in the reference's layout
(devkit/ganformer_parity.py; the model's parity with the reference is tests/models/test_ganformer.py): the loader
lists and loads them, Generate is the model's own forward, a batch is its seeds run alone, the attention outputs
are the model's attention masks, progress and interrupts are honoured, bad inputs are refused naming the input."""
from __future__ import annotations

import os

import pytest
import torch

from devkit import ganformer_parity as parity
from diffugan.models import ganformer as gf

FILES = {"ffhq": "network-snapshot-ffhq.pkl", "simplex": "network-snapshot-simplex.pkl",
         "orig": "network-snapshot-orig.pkl"}


@pytest.fixture(scope="module")
def generators(comfy):
    """Snapshots of three configs in models/ganformer (unconditional with truncation; class-conditional; without an
    average w), a StyleGAN pickle and a pickle that would run code; returns the Generators the snapshots hold."""
    import folder_paths

    folder = folder_paths.get_folder_paths("ganformer")[0]
    os.makedirs(folder, exist_ok=True)
    out = {}
    for name, file in FILES.items():
        out[name] = parity.fixture_generator(name)
        parity.write_snapshot(os.path.join(folder, file), out[name], parity.generator_kwargs(name))
    with open(os.path.join(folder, "evil.pkl"), "wb") as f:
        f.write(b"\x80\x04cposix\nsystem\nX\x04\x00\x00\x00trueR.")
    return out


@pytest.fixture(scope="module")
def loaded(run_node, generators):
    return {name: run_node("DiffuGANGANformerLoader", ckpt_name=file).args[0] for name, file in FILES.items()}


def _generate(run_node, model, **kw):
    args = dict(ganformer=model, seed=10, batch_size=1, truncation_psi=0.7, truncation_cutoff=0, noise_mode="const",
                class_label=0, component=-1)
    return run_node("DiffuGANGANformerGenerate", **{**args, **kw}).args


def _expected_image(img: torch.Tensor) -> torch.Tensor:
    return (img * 0.5 + 0.5).clamp(0, 1).movedim(1, -1)


def test_folder_registered_and_listed(comfy, generators, loaded):
    import folder_paths

    assert folder_paths.get_folder_paths("ganformer")[0].endswith("models/ganformer")
    assert set(FILES.values()) <= set(folder_paths.get_filename_list("ganformer"))
    spec = comfy.NODE_CLASS_MAPPINGS["DiffuGANGANformerLoader"].GET_NODE_INFO_V1()["input"]["required"]["ckpt_name"]
    assert spec[0] == "COMBO" and set(FILES.values()) <= set(spec[1]["options"])
    for name, model in loaded.items():  # the snapshot's EMA generator, every weight
        mine, theirs = model.generator.state_dict(), generators[name].state_dict()
        assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert "GANformer, 32px, k=5" in loaded["ffhq"].identity


@pytest.mark.parametrize("noise_mode,psi,cutoff", [("const", 0.7, 0), ("none", 1.0, 0), ("const", 0.5, 3)])
def test_generate_is_the_models_forward_for_consecutive_seeds(run_node, generators, loaded, noise_mode, psi, cutoff):
    G = generators["ffhq"]
    image, w, attention, segments = _generate(run_node, loaded["ffhq"], batch_size=3, truncation_psi=psi,
                                              truncation_cutoff=cutoff, noise_mode=noise_mode, component=2)
    z = gf.z_from_seeds([10, 11, 12], G.k, G.z_dim)
    img, att = G(z, None, truncation_psi=psi, truncation_cutoff=cutoff or None, noise_mode=noise_mode,
                 return_attention=True)
    assert image.shape == (3, 32, 32, 3) and image.dtype == torch.float32
    torch.testing.assert_close(image, _expected_image(img), rtol=0, atol=1e-5)
    torch.testing.assert_close(attention, gf.attention_masks(att)[:, 2], rtol=0, atol=1e-6)
    torch.testing.assert_close(w["ws"], G.mapping(z, None, G.pos, truncation_psi=psi, truncation_cutoff=cutoff or None))
    assert w["ws"].shape == (3, G.k, G.num_ws, G.w_dim) and w["model"] == loaded["ffhq"].identity
    assert segments.shape == (3, 32, 32, 3)


def test_a_batch_is_its_seeds_run_alone_and_random_noise_is_seeded(run_node, generators, loaded):
    G = generators["ffhq"]
    for mode in ("const", "random"):
        batch = _generate(run_node, loaded["ffhq"], seed=20, batch_size=3, noise_mode=mode)
        for i in range(3):
            alone = _generate(run_node, loaded["ffhq"], seed=20 + i, noise_mode=mode)
            for a, b in zip((batch[0], batch[2], batch[3]), (alone[0], alone[2], alone[3])):
                torch.testing.assert_close(a[i:i + 1], b, rtol=0, atol=1e-4)  # (batched rounding)
    again = _generate(run_node, loaded["ffhq"], seed=20, batch_size=3, noise_mode="random")[0]
    torch.testing.assert_close(again, batch[0], rtol=0, atol=0)
    # random noise: each image's seed's stream, continued after its z
    stream = torch.Generator().manual_seed(21)
    z = torch.randn(1, G.k, G.z_dim, generator=stream)
    assert torch.equal(z, gf.z_from_seeds([21], G.k, G.z_dim))
    expected = G(z, truncation_psi=0.7, noise_mode="random", generator=stream)
    torch.testing.assert_close(batch[0][1:2], _expected_image(expected), rtol=0, atol=1e-5)
    const = _generate(run_node, loaded["ffhq"], seed=20, batch_size=3, noise_mode="const")[0]
    assert not torch.allclose(batch[0], const)


def test_attention_masks_and_segments(run_node, generators, loaded):
    G = generators["ffhq"]
    local = G.k - 1
    outs = [_generate(run_node, loaded["ffhq"], seed=3, batch_size=2, component=c) for c in range(-1, local)]
    per_component = torch.stack([o[2] for o in outs[1:]], dim=1)  # (N, k-1, H, W)
    z = gf.z_from_seeds([3, 4], G.k, G.z_dim)
    expected = gf.attention_masks(G(z, truncation_psi=0.7, return_attention=True)[1])
    torch.testing.assert_close(per_component, expected, rtol=0, atol=1e-6)
    assert per_component.shape == (2, local, 32, 32) and float(per_component.min()) >= 0
    torch.testing.assert_close(per_component.sum(dim=1), torch.ones(2, 32, 32))  # a distribution over components
    # -1: the probability of each pixel's most likely component, between 1/(k-1) and 1
    owned = outs[0][2]
    torch.testing.assert_close(owned, per_component.amax(dim=1), rtol=0, atol=0)
    assert owned.shape == (2, 32, 32) and float(owned.min()) >= 1 / local - 1e-6 and float(owned.max()) <= 1
    assert float(owned.std()) > 0.01
    # segments: each pixel in its component's colour, distinct colours, the same whatever 'component' is
    segments = outs[0][3]
    colours = segments.reshape(-1, 3).unique(dim=0)
    assert 1 < len(colours) <= local and float(segments.min()) >= 0 and float(segments.max()) <= 1
    palette = torch.stack([segments[per_component.argmax(dim=1) == c][0] for c in per_component.argmax(dim=1).unique()])
    assert len(palette.unique(dim=0)) == len(palette)
    for o in outs[1:]:
        assert torch.equal(o[3], segments)
    # the attention MASK is an importance map as the pack's importance nodes (and DiT Refine) take it
    preview = run_node("DiffuGANImportancePreview", image=outs[0][0], importance=owned, opacity=0.5).args[0]
    assert preview.shape == (2, 32, 32, 3)
    budget = run_node("DiffuGANImportanceBudget", importance=outs[1][2], levels=4, budget=0.5).args[0]
    assert budget.shape == (2, 32, 32)


def test_conditional_generator_uses_the_class_label(run_node, generators, loaded):
    G = generators["simplex"]
    a = _generate(run_node, loaded["simplex"], class_label=0)
    b = _generate(run_node, loaded["simplex"], class_label=2)
    assert not torch.allclose(a[0], b[0])
    z = gf.z_from_seeds([10], G.k, G.z_dim)
    img, att = G(z, torch.eye(3)[[2]], truncation_psi=0.7, return_attention=True)
    torch.testing.assert_close(b[0], _expected_image(img), rtol=0, atol=1e-5)
    torch.testing.assert_close(b[2], gf.attention_masks(att).amax(dim=1), rtol=0, atol=1e-6)
    # ignored by an unconditional generator
    torch.testing.assert_close(_generate(run_node, loaded["ffhq"], class_label=7)[0],
                               _generate(run_node, loaded["ffhq"], class_label=0)[0], rtol=0, atol=0)


def test_bad_inputs_are_refused_naming_the_input(run_node, loaded):
    name = "DiffuGAN GANformer Generate"
    with pytest.raises(ValueError, match=f"{name}: 'class_label' 3 is out of range: this generator has 3 classes "
                                         r"\(0..2\)"):
        _generate(run_node, loaded["simplex"], class_label=3)
    with pytest.raises(ValueError, match=f"{name}: 'component' 4 is out of range: this generator has 4 local "
                                         r"components \(0..3\), or -1"):
        _generate(run_node, loaded["ffhq"], component=4)
    with pytest.raises(ValueError, match=f"{name}: 'component' -2 is out of range"):
        _generate(run_node, loaded["ffhq"], component=-2)
    with pytest.raises(ValueError, match=f"{name}: 'truncation_psi' must be 1 for this generator .*no average w"):
        _generate(run_node, loaded["orig"], truncation_psi=0.7)
    assert _generate(run_node, loaded["orig"], truncation_psi=1.0)[0].shape == (1, 16, 16, 3)
    with pytest.raises(ValueError, match=f"{name}: 'noise_mode' must be one of const, random, none"):
        _generate(run_node, loaded["ffhq"], noise_mode="loud")


def test_progress_per_chunk_and_interrupt(run_node, loaded, monkeypatch):
    import sys

    import comfy.model_management as mm
    import comfy.utils

    pack = next(m for name, m in sys.modules.items() if name.endswith("custom_nodes/DiffuGAN"))
    seen = []
    monkeypatch.setattr(comfy.utils, "PROGRESS_BAR_HOOK", lambda value, total, preview, node_id=None:
                        seen.append((value, total)))
    _generate(run_node, loaded["ffhq"], batch_size=3, noise_mode="random")  # image by image
    assert seen == [(1, 3), (2, 3), (3, 3)]
    seen.clear()
    monkeypatch.setattr(pack.nodes.ganformer, "CHUNK", 2)
    _generate(run_node, loaded["ffhq"], batch_size=3)
    assert seen == [(2, 3), (3, 3)]
    calls = []

    def stop_after_two():
        calls.append(1)
        if len(calls) > 2:
            raise mm.InterruptProcessingException()
    monkeypatch.setattr(mm, "throw_exception_if_processing_interrupted", stop_after_two)
    with pytest.raises(mm.InterruptProcessingException):
        _generate(run_node, loaded["ffhq"], batch_size=4, noise_mode="random")
    assert len(calls) == 3  # stopped at the third image's check


def test_missing_foreign_and_malicious_files_get_clear_errors(comfy, generators, run_node, tmp_path):
    import folder_paths

    from diffugan.models import stylegan as sg
    from nvidia_pickle import write_nvidia_pickle

    cls = comfy.NODE_CLASS_MAPPINGS["DiffuGANGANformerLoader"]
    msg = cls.validate_inputs(ckpt_name="ffhq-snapshot.pkl")
    assert "GANformer snapshot 'ffhq-snapshot.pkl' not found. Put it in the 'ganformer' model folder" in msg
    assert "models/ganformer" in msg and FILES["ffhq"] in msg and "dorarad/gansformer" in msg
    assert cls.validate_inputs(ckpt_name=FILES["ffhq"]) is True
    with pytest.raises(ValueError, match="DiffuGAN GANformer Loader: evil.pkl: refused to load: the pickle asks "
                                         "for 'posix.system'"):
        run_node("DiffuGANGANformerLoader", ckpt_name="evil.pkl")
    folder = folder_paths.get_folder_paths("ganformer")[0]
    write_nvidia_pickle(os.path.join(folder, "a-stylegan.pkl"),
                        sg.Generator(sg.StyleGANConfig("stylegan2", 8, 0, 8, 8, 3, {"num_layers": 1},
                                                       {"channel_base": 64, "channel_max": 8})))
    with pytest.raises(ValueError, match="DiffuGAN GANformer Loader: a-stylegan.pkl: .*use the StyleGAN loader"):
        run_node("DiffuGANGANformerLoader", ckpt_name="a-stylegan.pkl")


def test_the_w_output_is_refused_by_the_stylegan_nodes(run_node, loaded):
    w = _generate(run_node, loaded["ffhq"])[1]
    stylegan = run_node("DiffuGANStyleGANLoader", ckpt_name="diffugan-emoji-stylegan.safetensors").args[0]
    with pytest.raises(ValueError, match="DiffuGAN StyleGAN From W: 'w' is not a W\\+ latent"):
        run_node("DiffuGANStyleGANFromW", stylegan=stylegan, w=w, noise_mode="const", noise_seed=0)


def test_a_text_conditioned_generator_takes_the_prompt(run_node, comfy):
    """A GANformer trained on the zoo CLIP's embeddings as labels (scripts/train_zoo_ganformer.py marks its snapshot
    with the CLIP's identity): the prompt is its label; no style is its unprompted zero label; a style from another
    CLIP, or a style for a class-conditional generator, is refused."""
    import dataclasses

    import folder_paths

    from devkit.random_weights import perturb

    clip = run_node("DiffuGANCLIPLoader", ckpt_name="diffugan-emoji-clip.safetensors", architecture="auto").args[0]
    heart, cat = (run_node("DiffuGANStyleEncode", clip=clip, text=t, image_weight=1.0, negative="",
                           negative_weight=0.5).args[0] for t in ("red heart", "a cat"))
    dim = heart.embedding.numel()
    config = dataclasses.replace(parity.config("simplex"), c_dim=dim)
    torch.manual_seed(0)
    G = perturb(gf.Generator(config).eval(), 0.05)
    kwargs = {**parity.generator_kwargs("simplex"), "c_dim": dim}
    path = os.path.join(folder_paths.get_folder_paths("ganformer")[0], "text-ganformer.pkl")
    parity.write_snapshot(path, G, kwargs, extra={"diffugan": {"style_clip": heart.clip}})
    model = run_node("DiffuGANGANformerLoader", ckpt_name="text-ganformer.pkl").args[0]
    a, b, none = (_generate(run_node, model, style=s)[0] for s in (heart, cat, None))
    assert not torch.allclose(a, b) and not torch.allclose(a, none)
    z = gf.z_from_seeds([10], G.k, G.z_dim)
    img = G(z, heart.embedding.float().view(1, -1), truncation_psi=0.7)
    torch.testing.assert_close(a, _expected_image(img), rtol=0, atol=1e-4)
    torch.testing.assert_close(none, _expected_image(G(z, torch.zeros(1, dim), truncation_psi=0.7)), rtol=0, atol=1e-4)
    with pytest.raises(ValueError, match="'style': this generator is not text-conditioned"):
        _generate(run_node, run_node("DiffuGANGANformerLoader", ckpt_name=FILES["simplex"]).args[0], style=heart)
    other = dataclasses.replace(heart, clip="another CLIP #000000000000")
    with pytest.raises(ValueError, match="the style was encoded by CLIP another CLIP"):
        _generate(run_node, model, style=other)
