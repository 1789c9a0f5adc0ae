"""GANformer (models/ganformer.py): parity with dorarad/gansformer's own PyTorch code on small deterministic-weight
snapshots (devkit/ganformer_parity.py ran that code to store its outputs, and the layout of a snapshot its training
code wrote: ganformer_reference_layout.json), strict and safe loading of its snapshots, and the attention masks;
and its TensorFlow pickles: parity with its own converter (devkit/ganformer_tf_parity.py), strict and safe loading."""
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from devkit import ganformer_parity as parity
from diffugan.models import checkpoints as ck
from diffugan.models import ganformer as gf

REF = load_file(str(parity.FIXTURE))
REFERENCE_LAYOUT = json.loads(parity.LAYOUT.read_text())  # of a snapshot the reference's training code wrote
NAMES = list(parity.CONFIGS)


@pytest.fixture(scope="module")
def snapshots(tmp_path_factory) -> dict[str, Path]:
    """A snapshot per config, written in the reference's layout by devkit (checked against the reference's below)."""
    folder = tmp_path_factory.mktemp("ganformer")
    out = {}
    for name in NAMES:
        out[name] = folder / f"network-snapshot-{name}.pkl"
        parity.write_snapshot(out[name], parity.fixture_generator(name), parity.generator_kwargs(name))
    return out


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# --- parity ---------------------------------------------------------------------------------------------------
def test_a_snapshot_loads_its_ema_generator_strictly(snapshots):
    G = gf.load_ganformer(snapshots[parity.KEPT_SNAPSHOT])
    assert G.config == parity.config(parity.KEPT_SNAPSHOT)  # read off the record's constructor arguments
    assert_same_weights(G, parity.fixture_generator(parity.KEPT_SNAPSHOT))  # Gs (not G), every key used
    # the grid position encodings our constructor computes are the reference's
    fresh = gf.Generator(G.config).state_dict()
    for key, value in G.state_dict().items():
        if key.endswith("grid_pos"):
            torch.testing.assert_close(fresh[key], value, rtol=0, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", NAMES)
def test_mapping_synthesis_and_attention_match_the_reference(snapshots, name):
    G = gf.load_ganformer(snapshots[name])
    z = gf.z_from_seeds(list(parity.SEEDS), G.k, G.z_dim)
    assert torch.equal(z, REF[f"{name}.z"])  # seeds draw z as the reference's generate.py does
    c = REF.get(f"{name}.c")
    truncations = {"psi1": (1.0, None), "psi07": (parity.PSI, None), "psi07_cutoff3": (parity.PSI, 3)}
    psi = 1.0
    for label, (p, cutoff) in truncations.items():
        if f"{name}.ws.{label}" in REF:
            ws = G.mapping(z, c, G.pos, truncation_psi=p, truncation_cutoff=cutoff)
            torch.testing.assert_close(ws, REF[f"{name}.ws.{label}"], atol=1e-5, rtol=1e-5)
            psi = p
    img, att = G(z, c, truncation_psi=psi, noise_mode="const", return_attention=True)
    torch.testing.assert_close(img, REF[f"{name}.img.const"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(att[:1], REF[f"{name}.att.const.0"], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(G(z, c, truncation_psi=psi, noise_mode="none"), REF[f"{name}.img.none"],
                               atol=1e-4, rtol=1e-4)
    assert not torch.allclose(REF[f"{name}.img.const"], REF[f"{name}.img.none"]) or name == "orig"  # (no noise)


def test_our_writer_lays_snapshots_out_as_the_reference_does(snapshots):
    """The snapshots these tests load are written by devkit: the same records, class names, submodules, tensor
    names and shapes and constructor arguments as the file the reference's training code wrote (its layout was
    recorded when the reference ran; the file itself, which embeds the reference's source code, is not kept)."""
    mine = ck.load_nvidia_pickle(snapshots[parity.KEPT_SNAPSHOT])
    assert parity.snapshot_layout(mine) == REFERENCE_LAYOUT


# --- attention masks, sampling --------------------------------------------------------------------------------
@pytest.mark.parametrize("name,layers", [("ffhq", 7), ("simplex", 4)])
def test_attention_maps_are_distributions_over_the_components(name, layers):
    G = parity.fixture_generator(name)
    z = gf.z_from_seeds([3, 4], G.k, G.z_dim)
    img, att = G(z, parity.fixture_c(name), return_attention=True)
    heads = G.config.synthesis_kwargs["num_heads"]
    assert att.shape == (2, G.k - 1, layers, heads, G.img_resolution, G.img_resolution)
    assert float(att.min()) >= 0
    torch.testing.assert_close(att.sum(dim=1), torch.ones_like(att.sum(dim=1)))  # every pixel, layer and head
    for layer in (-1, 0, None):
        masks = gf.attention_masks(att, layer)
        assert masks.shape == (2, G.k - 1, G.img_resolution, G.img_resolution)
        torch.testing.assert_close(masks.sum(dim=1), torch.ones(2, G.img_resolution, G.img_resolution))
    # a layer below the image size is upsampled by repetition: constant over each 2x2 block at half size
    first = att[:, :, 0]  # the 4x4 layer at 32px (ffhq) or the 8x8 one at 16px (simplex)
    factor = 8 if name == "ffhq" else 2
    blocks = first.unflatten(-1, (-1, factor)).unflatten(-3, (-1, factor))
    assert torch.equal(blocks.amax(dim=(-3, -1)), blocks.amin(dim=(-3, -1)))
    assert att.std() > 0.01  # (not uniform: the components differ)


def test_noise_modes_and_truncation():
    G = parity.fixture_generator("ffhq")
    z = gf.z_from_seeds([5], G.k, G.z_dim)
    const, none = G(z, noise_mode="const"), G(z, noise_mode="none")
    r1 = G(z, noise_mode="random", generator=torch.Generator().manual_seed(1))
    r2 = G(z, noise_mode="random", generator=torch.Generator().manual_seed(1))
    assert torch.equal(r1, r2) and not torch.allclose(r1, const) and not torch.allclose(const, none)
    with pytest.raises(ValueError, match="noise_mode"):
        G(z, noise_mode="loud")
    ws = G.mapping(z, None, G.pos, truncation_psi=0.0)
    assert torch.equal(ws, G.mapping.w_avg.expand_as(ws))  # psi 0: every component and layer at w_avg
    cut = G.mapping(z, None, G.pos, truncation_psi=0.0, truncation_cutoff=2)
    assert torch.equal(cut[:, :, 2:], G.mapping(z, None, G.pos)[:, :, 2:])
    with pytest.raises(ValueError, match="no average w"):
        parity.fixture_generator("orig").mapping(gf.z_from_seeds([0], 3, 16), None, truncation_psi=0.5)
    with pytest.raises(ValueError, match=r"z must be \(N, 5, 16\)"):
        G(torch.zeros(1, 16))
    with pytest.raises(ValueError, match="conditional"):
        parity.fixture_generator("simplex")(gf.z_from_seeds([0], 4, 8))


# --- strict, safe loading -------------------------------------------------------------------------------------
def _write(path, name="clevr", edit=None, kwargs=None, **extra):
    parity.write_snapshot(path, parity.fixture_generator(name), kwargs or parity.generator_kwargs(name), edit=edit,
                          **extra)
    return path


def _child(record, dotted):
    for part in dotted.split("."):
        record = record.state["_modules"][part]
    return record


def test_broken_weights_are_refused_naming_file_and_keys(tmp_path):
    def drop(r):
        del _child(r, "synthesis.b16.conv1.transformer").state["_parameters"]["centroids"]

    def reshape(r):
        r.state["_parameters"]["pos"] = torch.zeros(2, 8)

    def extra(r):
        _child(r, "mapping").state["_parameters"]["surprise"] = torch.zeros(3)

    for label, edit, match in [("missing", drop, r"missing keys \(1\): synthesis.b16.conv1.transformer.centroids"),
                               ("shape", reshape, r"pos: expected \(3, 8\), found \(2, 8\)"),
                               ("extra", extra, r"unexpected keys \(1\): mapping.surprise")]:
        path = _write(tmp_path / f"gf_{label}.pkl", edit=edit)
        with pytest.raises(ck.CheckpointError, match=f"gf_{label}.pkl: weights do not fit the architecture: .*{match}"):
            gf.load_ganformer(path)


@pytest.mark.parametrize("where,option,value,match", [
    ("synthesis_kwargs", "integration", "both", r"synthesis_kwargs.integration='both' \(supported: 'add', 'mul'"),
    ("synthesis_kwargs", "iterative", True, "synthesis_kwargs.iterative=True"),
    ("synthesis_kwargs", "pos_type", "trainable", "synthesis_kwargs.pos_type='trainable'"),
    ("synthesis_kwargs", "img_gate", True, "synthesis_kwargs.img_gate=True"),
    ("synthesis_kwargs", "local_attention", 5, r"synthesis_kwargs.local_attention \(unknown option\)"),
    ("mapping_kwargs", "shared", True, "mapping_kwargs.shared=True"),
    ("mapping_kwargs", "transformer", False, "mapping_kwargs.transformer=False .*StyleGAN2 baseline"),
    (None, "merge", True, r"unknown Generator option\(s\) merge"),
    (None, "k", 1, "k=1"),
    ("synthesis_kwargs", "channel_base", 1 << 30, "implausible"),
])
def test_unsupported_options_are_refused_by_name(tmp_path, where, option, value, match):
    kwargs = parity.generator_kwargs("clevr")
    (kwargs if where is None else kwargs[where])[option] = value
    path = _write(tmp_path / "odd.pkl", kwargs=kwargs)
    with pytest.raises(ck.CheckpointError, match=f"odd.pkl: .*{match}"):
        gf.load_ganformer(path)


def test_other_files_are_refused_with_a_hint(tmp_path):
    from diffugan.models import stylegan as sg
    from nvidia_pickle import write_nvidia_pickle

    path = tmp_path / "ffhq-stylegan.pkl"
    write_nvidia_pickle(path, sg.Generator(sg.StyleGANConfig("stylegan2", 8, 0, 8, 8, 3, {"num_layers": 1},
                                                             {"channel_base": 64, "channel_max": 8})))
    with pytest.raises(ck.CheckpointError, match="ffhq-stylegan.pkl: .*lacks k .*use the StyleGAN loader"):
        gf.load_ganformer(path)
    path = tmp_path / "no_nets.pkl"
    path.write_bytes(pickle.dumps({"G_ema": None}, protocol=4))
    with pytest.raises(ck.CheckpointError, match=r"no_nets.pkl: no 'Gs' or 'G' network .*found: G_ema"):
        gf.load_ganformer(path)
    with pytest.raises(ck.CheckpointError, match="net.safetensors: a GANformer snapshot is a .pkl"):
        gf.load_ganformer(tmp_path / "net.safetensors")


class _Payload:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_pickles_that_would_run_code_are_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps({"Gs": _Payload(marker)}, protocol=4))
    with pytest.raises(ck.UnsafePickleError, match=r"evil.pkl: refused to load: .* asks for '(posix|os).system'"):
        gf.load_ganformer(path)

    def hide(r):  # a payload inside an otherwise real snapshot: in the state of an attention's dropout module
        _child(r, "synthesis.b8.conv1.transformer").state["_modules"]["att_dp"].hidden = _Payload(marker)

    path = _write(tmp_path / "trojan.pkl", edit=hide)
    with pytest.raises(ck.UnsafePickleError, match="trojan.pkl: refused to load"):
        gf.load_ganformer(path)
    path = _write(tmp_path / "trojan2.pkl", extra={"augment_pipe": _Payload(marker)})
    with pytest.raises(ck.UnsafePickleError, match="trojan2.pkl: refused to load"):
        gf.load_ganformer(path)
    assert not marker.exists()


def test_the_attention_dropout_module_is_read_as_data(snapshots):
    """Real snapshots hold a plain torch.nn.Dropout inside every attention layer: read as a record of its state,
    without torch.nn being asked to build anything."""
    data = ck.load_nvidia_pickle(snapshots[parity.KEPT_SNAPSHOT])
    dropout = _child(data["Gs"], "synthesis.b8.conv1.transformer.att_dp")
    assert isinstance(dropout, ck.PersistentRecord) and dropout.class_name == "Dropout"
    assert dropout.state["p"] == pytest.approx(0.06) and not dropout.state["_parameters"]


def test_a_dropout_record_accepts_only_a_state_dictionary(tmp_path):
    # NEWOBJ of the Dropout name, then BUILD with a list instead of the module's __dict__
    path = tmp_path / "odd_dropout.pkl"
    path.write_bytes(b"\x80\x04ctorch.nn.modules.dropout\nDropout\n)\x81]b.")
    with pytest.raises(ck.CheckpointError, match="odd_dropout.pkl: .*Dropout module whose state is not a dictionary"):
        ck.load_nvidia_pickle(path)


# --------------------------------------------------------------------------------------------------------------
# TensorFlow pickles (G, D, Gs): parity with the reference's own conversion (pytorch_version/loader.py), whose
# outputs devkit/ganformer_tf_parity.py stored beside the TF variables they were computed from
# --------------------------------------------------------------------------------------------------------------
from devkit import ganformer_tf_parity as tf_parity  # noqa: E402


@pytest.mark.parametrize("name", sorted(tf_parity.CONFIGS))
def test_tensorflow_pickle_matches_the_references_conversion(tmp_path, name):
    kw, variables, expected = tf_parity.fixture(name)
    sentinel = tmp_path / "ran"
    path = tf_parity.tf_pickle(kw, variables, tmp_path / f"{name}.pkl",
                               build_module_src=f"open({str(sentinel)!r}, 'w').write('x')\n")
    G = gf.load_ganformer(path)
    assert not sentinel.exists()  # the networks' build source is dropped unread
    assert (G.k, G.img_resolution, G.c_dim) == (kw["components_num"] + 1, kw["resolution"], 0)
    got = tf_parity.outputs(G, kw)
    assert got.keys() == expected.keys()
    for key, want in expected.items():  # (seen: ws exact, attention <= 1e-6, images <= 8e-6 at |img| <= 14)
        torch.testing.assert_close(got[key], want, atol=2e-5, rtol=1e-5, msg=f"{name}: {key}")
    if not kw.get("use_pos"):  # the latent-position maps TF never creates without use_pos: zero, and never read
        pos_maps = [v for k, v in G.state_dict().items() if k.endswith(("to_pos_map.weight", "sa0.from_pos_map.bias"))]
        assert pos_maps and all(not v.any() for v in pos_maps)


def _tf_file(tmp_path, name="duplex", kw_update=None, edit=None, drop=()):
    kw, variables, _ = tf_parity.fixture(name)
    kw = {k: v for k, v in {**kw, **(kw_update or {})}.items() if k not in drop}
    if edit:
        edit(variables)
    return tf_parity.tf_pickle(kw, variables, tmp_path / "tf.pkl")


@pytest.mark.parametrize("update,match", [
    ({"local_atention": 3}, r"local_atention \(unknown setting\)"),
    ({"integration": "both"}, r"integration='both' \(supported: 'add', 'mul'"),
    ({"label_size": 3}, r"label_size=3 .*no conditional TF GANformer can be built"),
    ({"mapping_resnet": False}, r"mapping_resnet=False .*one layer fewer"),
    ({"mapping_layersnum": 7}, r"mapping_layersnum / mapping_num_layers=7 .*only even counts"),
    ({"latent_size": 8}, r"latent_size / z_dim=8 with dlatent_size / w_dim=16"),
    ({"fmap_base": None}, r"sizes .* must be integers"),
    ({"kmeans_iters": 2}, r"kmeans_iters=2 with kmeans"),
    ({"mapping_dim": 32}, r"mapping_dim=32 .*map_start"),
    ({"transformer": False}, r"transformer=False .*StyleGAN2 baseline"),
    ({"iterative": True}, r"iterative=True"),
    ({"end_res": 3}, r"end_res=3 below log2\(resolution\)"),
    ({"fmap_decay": 0.5}, r"fmap_decay=0.5"),
    ({"pos_type": "trainable"}, r"pos_type='trainable'"),
    ({"fmap_max": 1 << 30}, "implausible"),
])
def test_tensorflow_pickle_with_unsupported_settings_is_refused_by_name(tmp_path, update, match):
    with pytest.raises(ck.CheckpointError, match=rf"tf\.pkl: .*{match}"):
        gf.load_ganformer(_tf_file(tmp_path, kw_update=update))


def test_tensorflow_pickles_of_other_networks_are_refused_with_a_hint(tmp_path):
    from devkit import tf_stylegan_parity
    from devkit.persistence_pickle import TFNetwork, dump
    from diffugan.models import stylegan as sg

    kw, variables, _ = tf_stylegan_parity.fixture("skip")
    path = tf_stylegan_parity.tf_pickle(kw, variables, tmp_path / "stylegan2-tf.pkl")
    with pytest.raises(ck.CheckpointError, match=r"stylegan2-tf\.pkl: .*no components_num.*use the StyleGAN loader"):
        gf.load_ganformer(path)
    with pytest.raises(ck.CheckpointError, match=r"tf\.pkl: .*components_num"):  # and the other way round
        sg.load_stylegan(_tf_file(tmp_path))
    kw, variables, _ = tf_parity.fixture("duplex")
    old = TFNetwork("G", kw, variables["G"], version=3)
    dump((old, old, old), tmp_path / "v3.pkl")
    with pytest.raises(ck.CheckpointError, match=r"v3\.pkl: .*format version 3"):
        gf.load_ganformer(tmp_path / "v3.pkl")


def test_tensorflow_pickle_missing_or_extra_variables_are_named(tmp_path):
    attention = "16x16/Conv1/AttLayer_l2n/iter_0/st_weights"
    with pytest.raises(ck.CheckpointError, match=rf"tf\.pkl: .*lacks 1 variable.*synthesis/{attention}"):
        gf.load_ganformer(_tf_file(tmp_path, edit=lambda v: v["synthesis"].pop(attention)))
    def two(v):
        del v["mapping"]["global/Dense3/weight"], v["G"]["ltnt_emb/emb"]
    with pytest.raises(ck.CheckpointError, match=r"lacks 2 variable.*(ltnt_emb/emb|mapping/global/Dense3/weight)"):
        gf.load_ganformer(_tf_file(tmp_path, edit=two))
    for extra in ("extra", "noise99", "16x16/Conv1/AttLayer_l2n/iter_1/st_weights"):
        def add(v, extra=extra):
            v["synthesis"][extra] = np.zeros(3, np.float32)
        with pytest.raises(ck.CheckpointError, match=rf"tf\.pkl: .*variable\(s\) a GANformer .* does not: "
                                                     rf"synthesis/{extra}"):
            gf.load_ganformer(_tf_file(tmp_path, edit=add))
    lod = lambda v: v["synthesis"].update({"ToRGB_lod0/weight": np.zeros((1, 1, 8, 3), np.float32)})  # noqa: E731
    with pytest.raises(ck.CheckpointError, match=r"progressive-growing network \(ToRGB_lod layers\)"):
        gf.load_ganformer(_tf_file(tmp_path, edit=lod))
    # the noise input TF creates for a layer index no layer has (and, without local_noise, all of them): accepted
    # when present (the fixtures have them), and not needed
    gf.load_ganformer(_tf_file(tmp_path, edit=lambda v: v["synthesis"].pop("noise5")))


def test_tensorflow_pickle_wrong_shapes_name_the_key(tmp_path):
    def edit(v):
        v["synthesis"]["8x8/Conv1/weight"] = np.zeros((3, 3, 7, 16), np.float32)
    with pytest.raises(ck.CheckpointError, match=r"tf\.pkl: weights do not fit .*synthesis\.b8\.conv1\.weight: "
                                                 r"expected \(16, 16, 3, 3\), found \(16, 7, 3, 3\)"):
        gf.load_ganformer(_tf_file(tmp_path, edit=edit))

    def flat(v):
        v["synthesis"]["noise0"] = np.zeros(5, np.float32)
    with pytest.raises(ck.CheckpointError, match=r"tf\.pkl: TensorFlow variable 'synthesis/noise0' has shape \[5\], "
                                                 r"which cannot hold 'synthesis\.b4\.conv1\.noise_const'"):
        gf.load_ganformer(_tf_file(tmp_path, edit=flat))


def test_tensorflow_network_with_a_payload_in_its_variables_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    kw, variables, _ = tf_parity.fixture("duplex")
    variables["synthesis"]["8x8/Conv1/AttLayer_l2n/toasgn_init"] = _Payload(marker)
    path = tf_parity.tf_pickle(kw, variables, tmp_path / "evil.pkl")
    with pytest.raises(ck.UnsafePickleError, match=r"evil\.pkl: refused to load: .* asks for '(posix|os)\.system'"):
        gf.load_ganformer(path)
    assert not marker.exists()
