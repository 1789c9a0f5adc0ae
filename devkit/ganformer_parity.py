"""Parity of models/ganformer.py with dorarad/gansformer's own PyTorch code, on small deterministic-weight snapshots.

The weights are drawn here, deterministically (`fixture_state_dict`: a seeded generator over the reference's parameter
names, which models/ganformer.py shares). `main` builds the networks with the reference's own training code
(`training_loop.construct_nets` from a network config laid out as its run_network.py lays it out), loads these weights
into its EMA generator `Gs` strictly, writes the snapshot with its `training_loop.save_nets` (so the file is a genuine
network-snapshot pickle: G, D, Gs and dataset_args, persistence records carrying the module source), reads it back
with its `loader.load_network_pkl` (as its generate.py does) and stores what `Gs` computes in
tests/models/ganformer_reference.safetensors: z drawn as generate.py draws it, the mapping's ws with and without
truncation, images with noise_mode const and none, and attention maps. The smallest snapshot is kept as a test fixture
(tests/models/ganformer_<name>.pkl).

`write_snapshot` writes the same layout without the reference code (for tests that need broken or altered files).

    git clone https://github.com/dorarad/gansformer /tmp/gansformer        # (or any checkout of it)
    .venv/bin/python devkit/ganformer_parity.py /tmp/gansformer          # -> tests/models/ganformer_reference.*

The reference imports seaborn, termcolor and gdown for logging and downloads only: if they are missing, stand-ins
without behaviour are installed for the run. Its code is run from the checkout and never copied here.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import torch

from devkit.persistence_pickle import EasyDict, Record, dump, module_state

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "models" / "ganformer_reference.safetensors"
LAYOUT = ROOT / "tests" / "models" / "ganformer_reference_layout.json"
KEPT_SNAPSHOT = "clevr"  # the config whose reference-written snapshot's layout is kept (LAYOUT)
SEEDS = (0, 1)
PSI = 0.7  # generate.py's default

# Networks laid out as the reference's run_network.py lays out `--ganformer-default` (scaled down; per dataset it
# sets style and ltnt2ltnt off for CLEVR), plus the options around it. Top level: the Generator's own arguments.
_DEFAULT_MAPPING = dict(resnet=True, ltnt2ltnt=True, transformer=True, use_pos=True, num_heads=1)
_DEFAULT_SYNTHESIS = dict(architecture="resnet", style=True, local_noise=True, transformer=True, use_pos=True,
                          num_heads=1, start_res=0, end_res=8, norm="layer", integration="mul", kmeans=True,
                          kmeans_iters=1, pos_type="sinus", pos_init="uniform", pos_directions_num=2)
CONFIGS = {
    # --ganformer-default (FFHQ, Cityscapes, LSUN-Bedrooms): duplex attention, resnet blocks, latent self-attention
    "ffhq": dict(z_dim=16, w_dim=16, k=5, c_dim=0, img_resolution=32, mapping_kwargs=_DEFAULT_MAPPING,
                 synthesis_kwargs={**_DEFAULT_SYNTHESIS, "channel_base": 512, "channel_max": 32}),
    # --ganformer-default on CLEVR (no style modulation, no latent self-attention), with 2 heads and 2 k-means steps
    "clevr": dict(z_dim=8, w_dim=8, k=4, c_dim=0, img_resolution=16,
                  mapping_kwargs={**_DEFAULT_MAPPING, "ltnt2ltnt": False},
                  synthesis_kwargs={**_DEFAULT_SYNTHESIS, "style": False, "num_heads": 2, "kmeans_iters": 2,
                                    "channel_base": 128, "channel_max": 16}),
    # simplex attention (keys, additive, instance norm) at 8 and 16 only, skip blocks, plain MLP mapping with latent
    # self-attention, 2 heads, class-conditional, relu
    "simplex": dict(z_dim=8, w_dim=16, k=4, c_dim=3, img_resolution=16,
                    mapping_kwargs=dict(num_layers=3, layer_dim=16, ltnt2ltnt=True, transformer=True, num_heads=2),
                    synthesis_kwargs=dict(architecture="skip", transformer=True, num_heads=2, start_res=3, end_res=5,
                                          norm="instance", integration="add", act="relu", channel_base=256,
                                          channel_max=32)),
    # duplex with instance norm, 'orig' blocks, no noise inputs, no tracked w_avg (so no truncation)
    "orig": dict(z_dim=16, w_dim=16, k=3, c_dim=0, img_resolution=16,
                 mapping_kwargs={**_DEFAULT_MAPPING, "num_heads": 2, "w_avg_beta": None},
                 synthesis_kwargs=dict(architecture="orig", transformer=True, use_pos=True, num_heads=2, kmeans=True,
                                       norm="instance", integration="mul", local_noise=False, channel_base=256,
                                       channel_max=32)),
}


def generator_kwargs(name: str) -> dict:
    """The Generator's constructor arguments as the reference's training records them (its _init_kwargs): the whole
    network config of run_network.py (optimizer and regularisation interval included), plus the dataset's."""
    cfg = CONFIGS[name]
    return dict(z_dim=cfg["z_dim"], w_dim=cfg["w_dim"], k=cfg["k"], component_dropout=0.0, reg_interval=4,
                opt_args=dict(class_name="torch.optim.Adam", lr=0.002, betas=[0, 0.99], eps=1e-8),
                mapping_kwargs=dict(cfg["mapping_kwargs"]), synthesis_kwargs=dict(cfg["synthesis_kwargs"]),
                c_dim=cfg["c_dim"], img_resolution=cfg["img_resolution"], img_channels=3)


def config(name: str):
    from diffugan.models import ganformer as gf

    cfg = CONFIGS[name]
    return gf.GANformerConfig(cfg["z_dim"], cfg["c_dim"], cfg["w_dim"], cfg["k"], cfg["img_resolution"], 3,
                              dict(cfg["mapping_kwargs"]), dict(cfg["synthesis_kwargs"]))


def fixture_state_dict(name: str, seed: int = 2103_01209) -> dict[str, torch.Tensor]:
    """The reference-named weights of config `name`, the same on every run: effective (run-time) weights of unit
    scale, biases and w_avg of 0.2-0.5, noise strengths and attention weights away from their zero/one inits. The
    grid position encodings and FIR kernels are kept as the constructor computes them."""
    from diffugan.models import ganformer as gf
    from diffugan.models.stylegan_ops import FullyConnectedLayer

    G = gf.Generator(config(name))
    computed = {k: v for k, v in G.state_dict().items() if k.endswith(("grid_pos", "resample_kernel"))}
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(G.state_dict()):
        shape = G.state_dict()[key].shape
        owner_name, _, leaf = key.rpartition(".")
        owner = G.get_submodule(owner_name) if owner_name else G
        randn = lambda scale=1.0, shift=0.0: shift + scale * torch.randn(shape, generator=gen)  # noqa: E731
        if key in computed:
            out[key] = computed[key].clone()
        elif isinstance(owner, FullyConnectedLayer):
            lrmul = owner.bias_gain  # stored weights and biases are divided by it
            if leaf == "weight":
                out[key] = randn() / lrmul
            else:
                out[key] = randn(0.2, 1.0 if owner_name.endswith("affine") else 0.0) / lrmul
        elif leaf == "noise_strength":
            out[key] = randn(0.3)
        elif leaf == "w_avg":
            out[key] = randn(0.5)
        elif leaf == "att_weight":
            out[key] = randn(0.3, 1.0)
        elif leaf == "pos":
            out[key] = torch.rand(shape, generator=gen)
        elif leaf == "bias":
            out[key] = randn(0.2)
        else:  # convolution weights, const, noise_const, centroids
            out[key] = randn()
    return out


def fixture_generator(name: str):
    """models/ganformer.py's Generator with the fixture weights (what loading the fixture snapshot must give)."""
    from diffugan.models import ganformer as gf

    G = gf.Generator(config(name))
    G.load_state_dict(fixture_state_dict(name), strict=True)
    return G.eval().requires_grad_(False)


def fixture_z(name: str) -> torch.Tensor:
    """(len(SEEDS), k, z_dim): as the reference's generate.py draws z (`torch.randn([1, k, z_dim])` from torch's
    global generator), seeded with each seed."""
    cfg = CONFIGS[name]
    zs = []
    for s in SEEDS:
        torch.manual_seed(s)
        zs.append(torch.randn([1, cfg["k"], cfg["z_dim"]]))
    return torch.cat(zs)


def fixture_c(name: str) -> torch.Tensor | None:
    c_dim = CONFIGS[name]["c_dim"]
    return torch.eye(c_dim)[[0, c_dim - 1]] if c_dim else None


# --------------------------------------------------------------------------------------------------------------
# The snapshot layout, written without the reference code
# --------------------------------------------------------------------------------------------------------------
# class names of the reference for ours (what its persistence records name)
REFERENCE_CLASS = {"Attention": "TransformerLayer", "SkipLayer": "Conv2dLayer", "BiasAct": "BiasActLayer"}
def module_record(module: torch.nn.Module, init_kwargs: dict | None = None) -> Record:
    """Our module tree as the reference's records: its class names, plus the submodules it has and we do not
    (the attention's parameterless gates and its dropout, a plain torch.nn.Dropout as in its files)."""
    name = type(module).__name__
    children = {k: module_record(v) for k, v in module._modules.items()}
    if name == "Attention":
        gate = lambda: Record("GateAttention", _module_state({}, {}, {}))  # noqa: E731
        children.update(to_gate_attention=gate(), from_gate_attention=gate(), att_dp=torch.nn.Dropout(0.06).eval())
    if name == "SkipLayer":
        children["biasAct"] = Record("BiasActLayer", _module_state({}, {}, {}))
    state = _module_state(dict(module._parameters), dict(module._buffers), children, init_kwargs)
    return Record(REFERENCE_CLASS.get(name, name), state)


def _module_state(params: dict, buffers: dict, children: dict, init_kwargs: dict | None = None) -> dict:
    return module_state({k: v for k, v in params.items() if v is not None}, buffers, children, init_kwargs)


def write_snapshot(path, G, init_kwargs: dict, G_train=None, edit=None, extra: dict | None = None) -> None:
    """A training snapshot as the reference's `save_nets` lays it out: dict(dataset_args, G, D, Gs), pickled at the
    default protocol. `G` (our Generator) goes in as `Gs`, `G_train` (default: G) as `G`; `edit(record)` may alter
    the Gs record before writing (tests of broken files)."""
    kwargs = EasyDict({k: EasyDict(v) if isinstance(v, dict) else v for k, v in init_kwargs.items()})
    gs = module_record(G, kwargs)
    if edit is not None:
        edit(gs)
    snapshot = dict(dataset_args=dict(path="datasets/tiny", resolution=G.img_resolution, ratio=1.0,
                                      loader_args=EasyDict(num_workers=1)),
                    G=module_record(G_train if G_train is not None else G, kwargs),
                    D=Record("Discriminator", _module_state({}, {}, {}, {"c_dim": G.c_dim})), Gs=gs, **(extra or {}))
    dump(snapshot, path)


# --------------------------------------------------------------------------------------------------------------
# Running the reference
# --------------------------------------------------------------------------------------------------------------
def _stand_ins() -> None:
    """Modules the reference imports only to colour its log lines and download pretrained files."""
    import importlib.util

    for name in ("seaborn", "gdown", "termcolor"):
        if importlib.util.find_spec(name) is None:
            module = types.ModuleType(name)
            module.colored = lambda text, *args, **kwargs: text
            sys.modules[name] = module


def reference_snapshot(reference: Path, name: str, folder: Path) -> Path:
    """Build config `name` with the reference's training code, load the fixture weights into Gs (and another draw
    into G) strictly, and write the snapshot with the reference's save_nets. Returns its path."""
    from types import SimpleNamespace

    import dnnlib  # noqa: F401  (the reference's)
    from training import training_loop

    cfg = CONFIGS[name]
    kwargs = generator_kwargs(name)
    cG = dnnlib.EasyDict(class_name="training.networks.Generator",
                         **{k: v for k, v in kwargs.items() if k not in ("c_dim", "img_resolution", "img_channels")})
    cG.mapping_kwargs, cG.synthesis_kwargs = dnnlib.EasyDict(cG.mapping_kwargs), dnnlib.EasyDict(cG.synthesis_kwargs)
    cD = dnnlib.EasyDict(class_name="training.networks.Discriminator", reg_interval=16,
                         opt_args=dnnlib.EasyDict(kwargs["opt_args"]), mapping_kwargs=dnnlib.EasyDict(),
                         block_kwargs=dnnlib.EasyDict(), epilogue_kwargs=dnnlib.EasyDict(mbstd_group_size=2),
                         channel_base=64, channel_max=8)
    dataset = SimpleNamespace(label_dim=cfg["c_dim"], resolution=cfg["img_resolution"], num_channels=3)
    torch.manual_seed(0)  # (D keeps its initial weights: the same on every run)
    G, D, Gs = training_loop.construct_nets(cG, cD, dataset, "cpu", log=False)
    Gs.load_state_dict(fixture_state_dict(name), strict=True)
    G.load_state_dict(fixture_state_dict(name, seed=7), strict=True)  # the raw generator: must not be the one used
    dataset_args = dnnlib.EasyDict(class_name="training.dataset.ImageFolderDataset", path=f"datasets/{name}",
                                   max_items=None, resolution=cfg["img_resolution"], ratio=1.0, mirror_augment=True,
                                   loader_args=dnnlib.EasyDict(num_workers=1, pin_memory=True, prefetch_factor=2))
    folder.mkdir(parents=True, exist_ok=True)
    _, path = training_loop.save_nets(G, D, Gs, 0, dataset_args, str(folder), False, 0, True)
    return Path(path)


def snapshot_layout(data: dict) -> dict:
    """What a snapshot holds, without its numbers or code: its top-level entries, and for the EMA generator `Gs` the
    tree of records (class name per submodule), every tensor's name and shape, and the constructor arguments."""
    from diffugan.models import checkpoints as ck

    def tree(record, prefix=""):
        out = {prefix: record.class_name}
        for child, sub in record.state["_modules"].items():
            out.update(tree(sub, f"{prefix}{child}."))
        return out

    gs = data["Gs"]
    return {"entries": sorted(data), "records": tree(gs),
            "tensors": {k: list(v.shape) for k, v in ck.record_tensors(gs).items()},
            "init_kwargs": json.loads(json.dumps(gs.state["_init_kwargs"], default=repr))}


def main(reference: Path) -> None:
    from diffugan.models import checkpoints as ck
    import tempfile

    from safetensors.torch import save_file

    torch.set_num_threads(1)
    _stand_ins()
    sys.path.insert(0, str(reference / "pytorch_version"))
    import loader  # noqa: E402  (the reference's own loader, as its generate.py uses it)

    out = {}
    for name in CONFIGS:
        path = reference_snapshot(reference, name, Path(tempfile.mkdtemp()) / name)
        with open(path, "rb") as f:
            Gs = loader.load_network_pkl(f)["Gs"].eval()
        print(f"{name}: {path.stat().st_size} bytes")
        if name == KEPT_SNAPSHOT:  # its layout, not the file: the file embeds the reference's source code
            layout = snapshot_layout(ck.load_nvidia_pickle(path))
            LAYOUT.write_text(json.dumps(layout, indent=1, sort_keys=True) + "\n")
        z, c = fixture_z(name), fixture_c(name)
        out[f"{name}.z"] = z
        if c is not None:
            out[f"{name}.c"] = c
        with torch.no_grad():
            truncations = [("psi1", 1.0, None)]
            if CONFIGS[name]["mapping_kwargs"].get("w_avg_beta", 0.995) is not None:
                truncations += [("psi07", PSI, None), ("psi07_cutoff3", PSI, 3)]
            for label, psi, cutoff in truncations:
                out[f"{name}.ws.{label}"] = Gs(z, c, truncation_psi=psi, truncation_cutoff=cutoff, return_img=False,
                                               return_ws=True)[0]
            psi = PSI if len(truncations) > 1 else 1.0
            img, att = Gs(z, c, truncation_psi=psi, noise_mode="const", return_att=True)
            out[f"{name}.img.const"] = img
            out[f"{name}.att.const.0"] = att[:1]  # (the first sample: the maps are image-sized)
            out[f"{name}.img.none"] = Gs(z, c, truncation_psi=psi, noise_mode="none")[0]
    from devkit import reference_commit

    save_file({k: v.contiguous() for k, v in out.items()}, str(FIXTURE),
              metadata={"reference": "dorarad/gansformer pytorch_version", "commit": reference_commit(reference)})
    print(f"wrote {FIXTURE} ({len(out)} tensors, {FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    import devkit  # noqa: F401  (registers the pack as the package `diffugan`)

    main(Path(sys.argv[1]).resolve())
