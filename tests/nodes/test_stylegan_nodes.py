"""StyleGAN nodes inside the real ComfyUI (in-process), on small checkpoints written in the real formats."""
import pytest
import torch

from diffugan.models import stylegan as sg
from nvidia_pickle import write_nvidia_pickle

CFG = sg.StyleGANConfig("stylegan2", z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                        mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 256, "channel_max": 32})
COND = sg.StyleGANConfig("stylegan2", z_dim=8, c_dim=3, w_dim=8, img_resolution=8, img_channels=3,
                         mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 64, "channel_max": 16})


def _generator(cfg, seed=0):
    torch.manual_seed(seed)
    G = sg.Generator(cfg).eval().requires_grad_(False)
    with torch.no_grad():
        G.mapping.w_avg.normal_()
        for n, p in G.named_parameters():
            if n.endswith("noise_strength"):
                p.fill_(0.2)
    return G


@pytest.fixture(scope="module")
def checkpoints(comfy):
    import folder_paths

    folder = folder_paths.get_folder_paths("stylegan")[0]
    import os

    os.makedirs(folder, exist_ok=True)
    G, C, T = _generator(CFG), _generator(COND, 1), _generator(COND, 2)
    write_nvidia_pickle(os.path.join(folder, "tiny.pkl"), G)
    sg.save_stylegan_safetensors(C, os.path.join(folder, "tiny_cond.safetensors"))
    T.style_clip = "DiffuGAN-CLIP-Emoji #text"  # a text-conditioned generator: its label is that CLIP's embedding
    sg.save_stylegan_safetensors(T, os.path.join(folder, "tiny_text.safetensors"))
    with open(os.path.join(folder, "evil.pkl"), "wb") as f:
        f.write(b"\x80\x04cposix\nsystem\nX\x04\x00\x00\x00trueR.")
    return {"tiny.pkl": G, "tiny_cond.safetensors": C, "tiny_text.safetensors": T}


def _load(run_node, name):
    return run_node("DiffuGANStyleGANLoader", ckpt_name=name).args[0]


def test_folder_registered_and_listed(comfy, checkpoints):
    import folder_paths

    assert folder_paths.get_folder_paths("stylegan")[0].endswith("models/stylegan")
    assert ({"tiny.pkl", "tiny_cond.safetensors", "tiny_text.safetensors"}
            <= set(folder_paths.get_filename_list("stylegan")))
    spec = comfy.NODE_CLASS_MAPPINGS["DiffuGANStyleGANLoader"].GET_NODE_INFO_V1()["input"]["required"]["ckpt_name"]
    assert spec[0] == "COMBO" and {"tiny.pkl", "tiny_cond.safetensors"} <= set(spec[1]["options"])


def test_generate_matches_the_model_for_consecutive_seeds(run_node, checkpoints):
    model = _load(run_node, "tiny.pkl")
    out = run_node("DiffuGANStyleGANGenerate", stylegan=model, seed=10, batch_size=3, truncation_psi=0.7,
                   truncation_cutoff=0, noise_mode="const", class_label=0)
    image, w = out.args
    assert image.shape == (3, 16, 16, 3) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 1
    G = checkpoints["tiny.pkl"]
    expected = (G(sg.z_from_seeds([10, 11, 12], 16), truncation_psi=0.7) * 0.5 + 0.5).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-6)
    assert w["ws"].shape == (3, G.num_ws, 16) and len(w["layer_names"]) == G.num_ws
    again = run_node("DiffuGANStyleGANGenerate", stylegan=model, seed=10, batch_size=3, truncation_psi=0.7,
                     truncation_cutoff=0, noise_mode="const", class_label=0).args[0]
    torch.testing.assert_close(again, image, rtol=0, atol=0)


def test_conditional_safetensors_model_uses_the_class_label(run_node, checkpoints):
    model = _load(run_node, "tiny_cond.safetensors")
    a = run_node("DiffuGANStyleGANGenerate", stylegan=model, seed=1, batch_size=1, truncation_psi=1.0,
                 truncation_cutoff=0, noise_mode="none", class_label=0).args[0]
    b = run_node("DiffuGANStyleGANGenerate", stylegan=model, seed=1, batch_size=1, truncation_psi=1.0,
                 truncation_cutoff=0, noise_mode="none", class_label=2).args[0]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError,
                       match="DiffuGAN StyleGAN Generate: class label 3 is out of range: this generator has 3"):
        run_node("DiffuGANStyleGANGenerate", stylegan=model, seed=1, batch_size=1, truncation_psi=1.0,
                 truncation_cutoff=0, noise_mode="none", class_label=3)


def _style(clip: str, vector):
    from diffugan.models import clip_style as cs

    v = torch.nn.functional.normalize(torch.tensor(vector, dtype=torch.float32), dim=0)
    return cs.StyleEmbedding(v, clip, [{"kind": "text", "source": "a prompt", "weight": 1.0}])


def test_text_conditioned_generator_takes_the_prompt_as_its_label(run_node, checkpoints):
    model = _load(run_node, "tiny_text.safetensors")
    T = checkpoints["tiny_text.safetensors"]
    gen = dict(stylegan=model, seed=4, batch_size=2, truncation_psi=0.6, truncation_cutoff=0, noise_mode="const",
               class_label=0)
    style = _style("DiffuGAN-CLIP-Emoji #text", [1.0, 0.0, 2.0])
    image, w = run_node("DiffuGANStyleGANGenerate", style=style, **gen).args
    z, c = sg.z_from_seeds([4, 5], 8), style.embedding.expand(2, -1)
    expected_ws = sg.conditional_w_avg(T, c)[:, None].lerp(T.mapping(z, c), 0.6)  # truncation toward the prompt
    torch.testing.assert_close(w["ws"], expected_ws, rtol=1e-5, atol=1e-6)
    expected = (T.synthesis(expected_ws) * 0.5 + 0.5).clamp(0, 1).movedim(1, -1)
    torch.testing.assert_close(image, expected, rtol=0, atol=1e-5)
    other = run_node("DiffuGANStyleGANGenerate", style=_style("DiffuGAN-CLIP-Emoji #text", [0, 1.0, 0]), **gen).args[0]
    unprompted = run_node("DiffuGANStyleGANGenerate", **gen).args[0]  # c = 0, the generator's unprompted mode
    assert not torch.allclose(other, image) and not torch.allclose(unprompted, image)
    with pytest.raises(ValueError, match=r"DiffuGAN StyleGAN Generate: the style was encoded by CLIP "
                                         r"DiffuGAN-CLIP-Demo #other, but this generator was trained on CLIP "
                                         r"DiffuGAN-CLIP-Emoji #text: encode the style with that CLIP"):
        run_node("DiffuGANStyleGANGenerate", style=_style("DiffuGAN-CLIP-Demo #other", [1.0, 0, 0]), **gen)
    with pytest.raises(ValueError, match="DiffuGAN StyleGAN Generate: this generator is not text-conditioned, so it "
                                         "takes no 'style': disconnect it .*Style Inject"):
        run_node("DiffuGANStyleGANGenerate", **{**gen, "stylegan": _load(run_node, "tiny_cond.safetensors")},
                 style=style)


def test_mix_and_from_w_round_trip(run_node, checkpoints):
    model = _load(run_node, "tiny.pkl")
    gen = dict(stylegan=model, batch_size=2, truncation_psi=1.0, truncation_cutoff=0, noise_mode="const", class_label=0)
    img_a, w_a = run_node("DiffuGANStyleGANGenerate", seed=1, **gen).args
    img_b, w_b = run_node("DiffuGANStyleGANGenerate", seed=5, **{**gen, "batch_size": 1}).args
    n = w_a["ws"].shape[1]
    same, w_same = run_node("DiffuGANStyleGANMix", stylegan=model, w_a=w_a, w_b=w_b, layer_start=n, layer_end=n,
                            noise_mode="const", noise_seed=0).args
    torch.testing.assert_close(same, img_a, rtol=0, atol=0)  # empty crossover keeps A
    full = run_node("DiffuGANStyleGANMix", stylegan=model, w_a=w_a, w_b=w_b, layer_start=0, layer_end=n,
                    noise_mode="const", noise_seed=0).args[0]
    torch.testing.assert_close(full, img_b.expand(2, -1, -1, -1), rtol=0, atol=1e-5)  # B broadcast over A's batch
    mixed, w_mixed = run_node("DiffuGANStyleGANMix", stylegan=model, w_a=w_a, w_b=w_b, layer_start=2, layer_end=n,
                              noise_mode="const", noise_seed=0).args
    rendered = run_node("DiffuGANStyleGANFromW", stylegan=model, w=w_mixed, noise_mode="const", noise_seed=0).args[0]
    torch.testing.assert_close(rendered, mixed, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"Style Mix: 'layer_start'/'layer_end' \[2, 60\) is outside"):
        run_node("DiffuGANStyleGANMix", stylegan=model, w_a=w_a, w_b=w_b, layer_start=2, layer_end=60,
                 noise_mode="const", noise_seed=0)


def test_random_noise_is_seeded(run_node, checkpoints):
    model = _load(run_node, "tiny.pkl")
    gen = dict(stylegan=model, batch_size=1, truncation_psi=1.0, truncation_cutoff=0, noise_mode="random",
               class_label=0)
    a = run_node("DiffuGANStyleGANGenerate", seed=3, **gen).args[0]
    b = run_node("DiffuGANStyleGANGenerate", seed=3, **gen).args[0]
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_w_from_another_generator_is_refused(run_node, checkpoints):
    big, small = _load(run_node, "tiny.pkl"), _load(run_node, "tiny_cond.safetensors")
    w = run_node("DiffuGANStyleGANGenerate", stylegan=small, seed=0, batch_size=1, truncation_psi=1.0,
                 truncation_cutoff=0, noise_mode="const", class_label=0).args[1]
    with pytest.raises(ValueError,
                       match="DiffuGAN StyleGAN From W: 'w' comes from tiny_cond.safetensors .* does not fit tiny.pkl"):
        run_node("DiffuGANStyleGANFromW", stylegan=big, w=w, noise_mode="const", noise_seed=0)


def test_missing_and_malicious_files_get_clear_errors(comfy, checkpoints, run_node):
    cls = comfy.NODE_CLASS_MAPPINGS["DiffuGANStyleGANLoader"]
    msg = cls.validate_inputs(ckpt_name="ffhq.pkl")
    assert "StyleGAN checkpoint 'ffhq.pkl' not found. Put it in the 'stylegan' model folder" in msg
    assert "models/stylegan" in msg and "tiny.pkl" in msg
    assert cls.validate_inputs(ckpt_name="tiny.pkl") is True
    with pytest.raises(ValueError,
                       match="DiffuGAN StyleGAN Loader: evil.pkl: refused to load: the pickle asks for 'posix.system'"):
        _load(run_node, "evil.pkl")
