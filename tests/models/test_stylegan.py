"""StyleGAN model + checkpoint tests on small checkpoints written in the real formats (no real weights here)."""
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from diffugan.models import checkpoints as ck
from diffugan.models import stylegan as sg
from nvidia_pickle import write_nvidia_pickle

SG2 = sg.StyleGANConfig("stylegan2", z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                        mapping_kwargs={"num_layers": 2},
                        synthesis_kwargs={"channel_base": 256, "channel_max": 32, "num_fp16_res": 0, "conv_clamp": 256})
SG2_COND = sg.StyleGANConfig("stylegan2", z_dim=8, c_dim=4, w_dim=16, img_resolution=8, img_channels=3,
                             mapping_kwargs={"num_layers": 2},
                             synthesis_kwargs={"channel_base": 128, "channel_max": 16, "architecture": "resnet"})

SG3_T = sg.StyleGANConfig("stylegan3", z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                          synthesis_kwargs={"channel_base": 512, "channel_max": 32, "num_layers": 6,
                                            "num_critical": 1, "margin_size": 4})
SG3_R = sg.StyleGANConfig("stylegan3", z_dim=16, c_dim=2, w_dim=16, img_resolution=16, img_channels=3,
                          synthesis_kwargs={"channel_base": 1024, "channel_max": 32, "num_layers": 6,
                                            "num_critical": 1, "margin_size": 4, "conv_kernel": 1,
                                            "use_radial_filters": True})


def make_generator(config, seed=0):
    torch.manual_seed(seed)
    G = sg.Generator(config).eval().requires_grad_(False)
    with torch.no_grad():  # non-trivial values where NVlabs initialises zeros
        for name, p in G.named_parameters():
            if name.endswith("noise_strength"):
                p.fill_(0.2)
            elif name.endswith("bias"):
                p.normal_(0, 0.1)
        G.mapping.w_avg.normal_()
    return G


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# --- formats --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [SG2, SG2_COND, SG3_T, SG3_R], ids=["sg2", "sg2_cond_resnet", "sg3_t", "sg3_r_cond"])
@pytest.mark.parametrize("nested", [False, True], ids=["stylegan3-repo", "stylegan2-ada-repo"])
def test_nvidia_pickle_loads_strictly_and_reproduces_images(tmp_path, config, nested):
    G = make_generator(config)
    path = tmp_path / "net.pkl"
    write_nvidia_pickle(path, G, nested_synthesis_kwargs=nested)
    loaded = sg.load_stylegan(path)
    assert loaded.config == config
    assert_same_weights(G, loaded)  # every key consumed (strict) and identical
    z = sg.z_from_seeds([1, 2], config.z_dim)
    c = sg.class_one_hot([0, config.c_dim - 1], config.c_dim)
    torch.testing.assert_close(loaded(z, c), G(z, c), rtol=0, atol=0)


def test_pickle_prefers_g_ema_over_g(tmp_path):
    G_ema, G_train = make_generator(SG2, seed=0), make_generator(SG2, seed=1)
    path = tmp_path / "snapshot.pkl"
    write_nvidia_pickle(path, G_ema, G_train=G_train)
    assert_same_weights(sg.load_stylegan(path), G_ema)


@pytest.mark.parametrize("config", [SG2_COND, SG3_R], ids=["sg2", "sg3"])
def test_safetensors_round_trip(tmp_path, config):
    G = make_generator(config)
    pkl = tmp_path / "net.pkl"
    write_nvidia_pickle(pkl, G)
    out = tmp_path / "net.safetensors"
    sg.save_stylegan_safetensors(sg.load_stylegan(pkl), out)
    loaded = sg.load_stylegan(out)
    assert loaded.config == config
    assert_same_weights(G, loaded)


# --- safety ---------------------------------------------------------------------------------------------------
class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickle_calling_os_system_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"G_ema": _Payload(marker)}, protocol=4))
    with pytest.raises(ck.UnsafePickleError,
                       match=r"evil.pkl: refused to load: the pickle asks for '(posix|os).system'"):
        sg.load_stylegan(path)
    assert not marker.exists()


def test_payload_hidden_inside_a_network_record_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    G = make_generator(SG2)
    path = tmp_path / "trojan.pkl"
    write_nvidia_pickle(path, G, extra={"augment_pipe_extra": _Payload(marker)})
    with pytest.raises(ck.UnsafePickleError, match="refused to load"):
        sg.load_stylegan(path)
    assert not marker.exists()


@pytest.mark.parametrize("module,name", [("builtins", "eval"), ("builtins", "exec"), ("subprocess", "Popen"),
                                         ("torch", "load"), ("numpy", "load"), ("dnnlib.util", "call_func_by_name")])
def test_every_other_global_is_refused(tmp_path, module, name):
    payload = b"\x80\x04" + f"c{module}\n{name}\n".encode() + b")R."
    path = tmp_path / "x.pkl"
    path.write_bytes(payload)
    with pytest.raises(ck.UnsafePickleError, match=f"'{module}.{name}'"):
        ck.load_nvidia_pickle(path)


def test_torch_file_with_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"w": torch.zeros(1), "x": _Payload(marker)}, path)
    with pytest.raises(ck.UnsafePickleError, match="evil.pt: refused to load"):
        ck.load_torch_weights(path)
    assert not marker.exists()


# --- clear errors ---------------------------------------------------------------------------------------------
def test_truncated_pickle_is_reported(tmp_path):
    path = tmp_path / "net.pkl"
    write_nvidia_pickle(path, make_generator(SG2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ck.CheckpointError, match="net.pkl: not a readable NVIDIA pickle .*truncated"):
        sg.load_stylegan(path)


def test_truncated_safetensors_is_reported(tmp_path):
    path = tmp_path / "net.safetensors"
    sg.save_stylegan_safetensors(make_generator(SG2), path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ck.CheckpointError, match="net.safetensors: not a valid safetensors file.*truncated"):
        sg.load_stylegan(path)


def test_wrong_shape_names_key_expected_and_found(tmp_path):
    G = make_generator(SG2)
    sd = G.state_dict()
    sd["synthesis.b8.conv1.weight"] = torch.zeros(32, 32, 1, 1)
    from dataclasses import asdict

    path = tmp_path / "bad.safetensors"
    ck.save_safetensors(path, sd, {"format": sg.SAFETENSORS_FORMAT, "config": asdict(SG2)})
    with pytest.raises(ck.CheckpointError,
                       match=r"bad.safetensors: .*synthesis.b8.conv1.weight: expected \(32, 32, 3, 3\), "
                             r"found \(32, 32, 1, 1\)"):
        sg.load_stylegan(path)


def test_missing_and_unexpected_keys_are_listed(tmp_path):
    sd = make_generator(SG2).state_dict()
    del sd["mapping.w_avg"]
    sd["mapping.fc9.weight"] = torch.zeros(1)
    from dataclasses import asdict

    path = tmp_path / "keys.safetensors"
    ck.save_safetensors(path, sd, {"format": sg.SAFETENSORS_FORMAT, "config": asdict(SG2)})
    with pytest.raises(ck.CheckpointError,
                       match=r"missing keys \(1\): mapping.w_avg .*unexpected keys \(1\): mapping.fc9.weight"):
        sg.load_stylegan(path)


def test_unknown_architecture_names_the_supported_ones(tmp_path):
    G = make_generator(SG2)
    G.synthesis.add_module("superres", torch.nn.Linear(1, 1))  # StyleGAN-XL-like extra module
    for res in G.synthesis.block_resolutions:
        delattr(G.synthesis, f"b{res}")
    path = tmp_path / "xl.pkl"
    write_nvidia_pickle(path, G)
    with pytest.raises(ck.CheckpointError, match="xl.pkl: unknown generator layout .*supported: StyleGAN2"):
        sg.load_stylegan(path)


def test_unknown_variant_setting_is_refused(tmp_path):
    cfg = sg.StyleGANConfig(**{**SG2.__dict__, "synthesis_kwargs": {**SG2.synthesis_kwargs, "superres_factor": 4}})
    path = tmp_path / "variant.safetensors"
    from dataclasses import asdict

    ck.save_safetensors(path, make_generator(SG2).state_dict(),
                        {"format": sg.SAFETENSORS_FORMAT, "config": asdict(cfg)})
    with pytest.raises(ck.CheckpointError,
                       match="variant.safetensors: unsupported stylegan2 variant .*superres_factor"):
        sg.load_stylegan(path)


def test_safetensors_without_our_metadata_is_explained(tmp_path):
    path = tmp_path / "plain.safetensors"
    ck.save_safetensors(path, make_generator(SG2).state_dict(), {})
    with pytest.raises(ck.CheckpointError, match="no DiffuGAN StyleGAN metadata.*convert_stylegan.py"):
        sg.load_stylegan(path)


# --- generation features --------------------------------------------------------------------------------------
def test_seeds_are_deterministic_and_match_nvlabs_gen_images():
    z = sg.z_from_seeds([0, 42], 16)
    torch.testing.assert_close(z[1], torch.from_numpy(np.random.RandomState(42).randn(16)).float())
    torch.testing.assert_close(sg.z_from_seeds([42], 16)[0], z[1])
    G = make_generator(SG2)
    torch.testing.assert_close(G(z), G(z.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("config", [SG2, SG3_T], ids=["sg2", "sg3"])
def test_psi_zero_gives_the_w_avg_image(config):
    G = make_generator(config)
    img_psi0 = G(sg.z_from_seeds([3, 4], 16), truncation_psi=0.0)
    w_avg_img = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1))
    # batch 2 vs batch 1 runs a different grouped convolution: equal up to float rounding
    torch.testing.assert_close(img_psi0, w_avg_img.expand(2, -1, -1, -1), rtol=0, atol=1e-5)


def test_truncation_cutoff_only_touches_the_first_layers():
    G = make_generator(SG2)
    z = sg.z_from_seeds([5], 16)
    full, cut = G.mapping(z), G.mapping(z, truncation_psi=0.5, truncation_cutoff=3)
    torch.testing.assert_close(cut[:, 3:], full[:, 3:])
    torch.testing.assert_close(cut[:, :3], G.mapping.w_avg.lerp(full[:, :3], 0.5))


@pytest.mark.parametrize("config", [SG2, SG3_T], ids=["sg2", "sg3"])
def test_style_mixing_crossover(config):
    G = make_generator(config)
    ws_a, ws_b = G.mapping(sg.z_from_seeds([1], 16)), G.mapping(sg.z_from_seeds([2], 16))
    img_a, img_b = G.synthesis(ws_a), G.synthesis(ws_b)
    n = G.num_ws
    torch.testing.assert_close(G.synthesis(sg.mix_styles(ws_a, ws_b, n, n)), img_a, rtol=0, atol=0)  # empty range
    torch.testing.assert_close(G.synthesis(sg.mix_styles(ws_a, ws_b, 0, n)), img_b, rtol=0, atol=0)  # all rows
    mixed = sg.mix_styles(ws_a, ws_b, 2, n)
    torch.testing.assert_close(mixed[:, :2], ws_a[:, :2])
    torch.testing.assert_close(mixed[:, 2:], ws_b[:, 2:])
    with pytest.raises(ValueError, match=rf"'layer_start'/'layer_end' \[3, 99\) is outside 0..{n} "):
        sg.mix_styles(ws_a, ws_b, 3, 99)


def test_conditional_generator_needs_and_uses_labels():
    G = make_generator(SG2_COND)
    z = sg.z_from_seeds([7, 7], 8)
    with pytest.raises(ValueError, match="conditional .*give a class label"):
        G(z)
    img = G(z, sg.class_one_hot([0, 1], 4))
    assert not torch.allclose(img[0], img[1])
    with pytest.raises(ValueError, match="class label 4 is out of range: this generator has 4 classes"):
        sg.class_one_hot([4], 4)


@pytest.mark.parametrize("config", [SG2, SG2_COND], ids=["skip", "resnet"])
def test_training_path_equals_the_fused_modulated_convolution(config):
    """In train mode the modulated convolutions run unfused (styles on the input, one shared convolution, then
    demodulation), as NVlabs trains; it must give the images the fused inference path gives."""
    G = make_generator(config)
    z = sg.z_from_seeds([3, 4, 5], config.z_dim)
    c = sg.class_one_hot([0, 1, 2], config.c_dim)
    fused = G(z, c, noise_mode="const")
    unfused = G.train()(z, c, noise_mode="const")
    torch.testing.assert_close(unfused, fused, rtol=1e-4, atol=1e-5)


def test_text_conditioned_generator_records_its_clip_and_truncates_toward_the_label(tmp_path):
    G = make_generator(SG2_COND)
    G.style_clip = "DiffuGAN-CLIP-Emoji #abc"
    sg.save_stylegan_safetensors(G, tmp_path / "t.safetensors")
    again = sg.load_stylegan(tmp_path / "t.safetensors")
    assert again.style_clip == "DiffuGAN-CLIP-Emoji #abc"
    assert sg.load_stylegan(tmp_path / "t.safetensors").c_dim == 4
    c = torch.nn.functional.normalize(torch.randn(2, 4), dim=1)
    z = sg.z_from_seeds([1, 2], 8)
    # psi 0: every z gives its label's mean w (not the global w_avg); psi 1: plain mapping
    ws0 = sg.mapping_truncated(again, z, c, 0.0)
    mean = sg.conditional_w_avg(again, c)
    torch.testing.assert_close(ws0, mean[:, None].expand_as(ws0))
    assert not torch.allclose(mean[0], again.mapping.w_avg)
    torch.testing.assert_close(sg.mapping_truncated(again, z, c, 1.0), again.mapping(z, c))
    # a class-conditional generator (no CLIP recorded) keeps NVlabs' truncation toward w_avg
    plain = make_generator(SG2_COND)
    torch.testing.assert_close(sg.mapping_truncated(plain, z, c, 0.5), plain.mapping(z, c, truncation_psi=0.5))
    unconditional = make_generator(SG2)
    unconditional.style_clip = "x #1"
    sg.save_stylegan_safetensors(unconditional, tmp_path / "bad.safetensors")
    with pytest.raises(ck.CheckpointError, match="records a style CLIP but has no label input"):
        sg.load_stylegan(tmp_path / "bad.safetensors")


def test_noise_modes():
    G = make_generator(SG2)
    z = sg.z_from_seeds([1], 16)
    const, none = G(z, noise_mode="const"), G(z, noise_mode="none")
    assert not torch.allclose(const, none)
    r1 = G(z, noise_mode="random", generator=torch.Generator().manual_seed(9))
    r2 = G(z, noise_mode="random", generator=torch.Generator().manual_seed(9))
    torch.testing.assert_close(r1, r2, rtol=0, atol=0)
    assert not torch.allclose(r1, const)


def test_layer_names_cover_every_w_row():
    G = make_generator(SG2)
    names = G.synthesis.layer_names()
    assert len(names) == G.num_ws and names[0] == "b4.conv1" and names[-1] == "b16.torgb"


def test_converter_cli(tmp_path):
    import subprocess
    import sys

    G = make_generator(SG2)
    pkl = tmp_path / "net.pkl"
    write_nvidia_pickle(pkl, G)
    root = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, str(root / "scripts" / "convert_stylegan.py"), str(pkl)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "stylegan2 16x16" in r.stdout
    assert_same_weights(sg.load_stylegan(tmp_path / "net.safetensors"), G)
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x04cos\nsystem\n)R.")
    r = subprocess.run([sys.executable, str(root / "scripts" / "convert_stylegan.py"), str(bad)],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "refused to load" in r.stderr


# --- fast resampling equals the naive definition ----------------------------------------------------------------
@pytest.mark.parametrize("taps", [[1, 3, 3, 1], list(range(1, 13)), "2d6"])
@pytest.mark.parametrize("up,down", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4), (3, 2)])
@pytest.mark.parametrize("padding", [0, (3, 1, 2, 4), (-2, 5, 1, -3)])
@pytest.mark.parametrize("flip_filter", [False, True])
def test_fast_upfirdn2d_matches_reference(taps, up, down, padding, flip_filter):
    g = torch.Generator().manual_seed(0)
    f = torch.rand(6, 6, generator=g) if taps == "2d6" else sg.setup_filter(taps)
    x = torch.randn(2, 3, 17, 19, generator=g)  # longer than the 12-tap filter even after cropping
    kw = dict(up=up, down=down, padding=padding, flip_filter=flip_filter, gain=up * up)
    ref = sg.upfirdn2d_reference(x, f, **kw)
    fast = sg.upfirdn2d(x, f, **kw)
    assert fast.shape == ref.shape
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------------------------
# TensorFlow pickles (NVlabs StyleGAN2 / StyleGAN2-ADA TF): parity with NVIDIA's own conversion (legacy.py), whose
# outputs devkit/tf_stylegan_parity.py stored beside the TF variables they were computed from
# --------------------------------------------------------------------------------------------------------------
from devkit import tf_stylegan_parity as tf_parity  # noqa: E402


@pytest.mark.parametrize("name", sorted(tf_parity.CONFIGS))
def test_tensorflow_pickle_matches_nvidias_conversion(tmp_path, name):
    kw, variables, expected = tf_parity.fixture(name)
    sentinel = tmp_path / "ran"
    path = tf_parity.tf_pickle(kw, variables, tmp_path / f"{name}.pkl",
                               build_module_src=f"open({str(sentinel)!r}, 'w').write('x')\n")
    G = sg.load_stylegan(path)
    assert not sentinel.exists()  # the networks' build source is dropped unread
    assert G.config.arch == "stylegan2" and G.img_resolution == kw["resolution"] and G.c_dim == kw.get("label_size", 0)
    got = tf_parity.outputs(G, kw)
    for key, want in expected.items():
        torch.testing.assert_close(got[key], want, atol=2e-5, rtol=1e-5, msg=f"{name}: {key}")


def _tf_file(tmp_path, name="skip", kw_update=None, edit=None):
    kw, variables, _ = tf_parity.fixture(name)
    kw = {**kw, **(kw_update or {})}
    if edit:
        edit(variables)
    return tf_parity.tf_pickle(kw, variables, tmp_path / "tf.pkl")


def test_converter_cli_converts_a_tensorflow_pickle(tmp_path):
    import subprocess
    import sys

    kw, variables, expected = tf_parity.fixture("resnet_cond")
    pkl = tf_parity.tf_pickle(kw, variables, tmp_path / "tf.pkl")
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parents[2] / "scripts" / "convert_stylegan.py"),
                        str(pkl)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    got = tf_parity.outputs(sg.load_stylegan(tmp_path / "tf.safetensors"), kw)
    torch.testing.assert_close(got["img_const"], expected["img_const"], atol=2e-5, rtol=1e-5)


def test_tensorflow_pickle_with_an_unknown_setting_is_refused_by_name(tmp_path):
    with pytest.raises(ck.CheckpointError, match=r"tf\.pkl: .*settings this loader does not implement \(fmap_decay\)"):
        sg.load_stylegan(_tf_file(tmp_path, kw_update={"fmap_decay": 0.5}))


def test_tensorflow_pickle_missing_or_extra_variables_are_named(tmp_path):
    with pytest.raises(ck.CheckpointError, match=r"lacks 1 variable.*synthesis/16x16/Conv1/mod_bias"):
        sg.load_stylegan(_tf_file(tmp_path, edit=lambda v: v["synthesis"].pop("16x16/Conv1/mod_bias")))
    with pytest.raises(ck.CheckpointError, match=r"variable\(s\) a 32px StyleGAN2 .* does not: synthesis/extra"):
        sg.load_stylegan(_tf_file(tmp_path, edit=lambda v: v["synthesis"].update(extra=np.zeros(3, np.float32))))


def test_tensorflow_pickle_wrong_shape_names_key(tmp_path):
    def edit(v):
        v["synthesis"]["8x8/Conv1/weight"] = np.zeros((3, 3, 7, 32), np.float32)
    with pytest.raises(ck.CheckpointError, match=r"tf\.pkl: .*synthesis\.b8\.conv1\.weight"):
        sg.load_stylegan(_tf_file(tmp_path, edit=edit))


def test_tensorflow_config_a_to_d_and_old_versions_are_refused(tmp_path):
    def lod(v):
        v["synthesis"]["ToRGB_lod0/weight"] = v["synthesis"].pop("32x32/ToRGB/weight")
    with pytest.raises(ck.CheckpointError, match=r"config A-D network \(ToRGB_lod layers\)"):
        sg.load_stylegan(_tf_file(tmp_path, edit=lod))
    kw, variables, _ = tf_parity.fixture("skip")
    from devkit.persistence_pickle import TFNetwork, dump
    old = TFNetwork("G", kw, variables["G"], version=3)
    dump((old, old, old), tmp_path / "v3.pkl")
    with pytest.raises(ck.CheckpointError, match=r"v3\.pkl: .*format version 3"):
        sg.load_stylegan(tmp_path / "v3.pkl")


def test_tensorflow_network_with_a_payload_in_its_variables_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (eval, ("1",))
    kw, variables, _ = tf_parity.fixture("skip")
    variables["G"]["dlatent_avg"] = Payload()
    path = tf_parity.tf_pickle(kw, variables, tmp_path / "evil.pkl")
    with pytest.raises(ck.UnsafePickleError, match=r"evil\.pkl: refused to load: .*builtins\.eval"):
        sg.load_stylegan(path)
