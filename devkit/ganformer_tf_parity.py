"""Parity of the GANformer loader's TensorFlow path with the reference's own conversion, on small random networks.

dorarad/gansformer's TensorFlow version pickles its networks as `(G, D, Gs)` tuples of `dnnlib.tflib.network.Network`
objects; its PyTorch version converts them on load (`pytorch_version/loader.py`, `convert_tf_generator`). Here the
TF variables of small generators are laid out as the reference's TF code names and shapes them
(`tf_generator_variables`, written from the scopes of training/network.py and training/networks.py: `ltnt_emb/emb`,
`dlatent_avg`, `mapping/[global/]Dense<i>_<j>`, `mapping/[global/]Dense<n/2-1>`, `mapping/AttLayer_<i>/*`,
`synthesis/noise<i>`, `synthesis/<r>x<r>/{Const,Conv,Conv0_up,Conv1,Skip,ToRGB,ToRGB/extraLayer}`, the attention's
`AttLayer_l2n/{weight,bias}_{query,key,value,from_pos,to_pos,out}`, `toasgn_init`, `iter_0/st_weights`), filled from
a seeded numpy generator and pickled as TF networks are (devkit/persistence_pickle.py). The reference converter — run
from a checkout given on the command line, never copied here — turns `Gs` into its PyTorch generator; its outputs
(z drawn as its generate.py draws it, seeded; ws at psi 1 and 0.7; images with constant noise and without; the
attention maps) are stored with the variables in tests/models/ganformer_tf_reference.safetensors, and
tests/models/test_ganformer.py writes the same pickles from those variables and compares models/ganformer.py's
outputs.

The converter reads some variables wrongly (see models/ganformer.py `_from_tf_network`); so that it runs at all on
these small networks, its copy of the file (`reference_variables`), and only that copy, gets them under the names
it reads: the last block's `ToRGB/extraLayer` again as `256x256/ToRGB/extraLayer` (it converts conv_last for 256x256
only: for the run, `reference_converter` renames its `b256` patterns to the last block), for a mapping of other
than 8 layers the last layer again as `Dense3`, and without use_pos zeros for the `to_pos` / `from_pos` variables
TF never creates and the converted generator never reads. The loader under test gets the file as TF writes it.

    git clone https://github.com/dorarad/gansformer /tmp/gansformer
    .venv/bin/python devkit/ganformer_tf_parity.py /tmp/gansformer  # -> tests/models/ganformer_tf_reference.safetensors
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "models" / "ganformer_tf_reference.safetensors"
SEEDS = (0, 1)
PSI = 0.7  # the reference's generate.py default

# TF kwargs as the reference's run_network.py sets them (the defaults it writes into every network, the training
# settings included), scaled down.
_RUN_NETWORK = dict(num_channels=3, label_size=0, tanh=False, style_mixing=0.9, component_mixing=0.0,
                    component_dropout=0.0, attention_dropout=0.12, truncation_psi=0.75, fused_modconv=True,
                    pos_type="sinus", pos_init="uniform", pos_directions_num=2, merge=False, merge_layer=-1,
                    img2img=0, kmeans_iters=1, latent_stem=False)
CONFIGS = {
    # --ganformer-default (FFHQ): duplex attention with k-means, layer norm, multiplicative integration, latent
    # positions, resnet blocks, residual mapping with latent self-attention; training/network.py's spelling
    "duplex": dict(_RUN_NETWORK, latent_size=16, dlatent_size=16, components_num=4, resolution=16, fmap_base=64,
                   fmap_max=16, transformer=True, norm="layer", integration="mul", kmeans=True, use_pos=True,
                   mapping_ltnt2ltnt=True, style=True, architecture="resnet", mapping_resnet=True, local_noise=True,
                   mapping_layersnum=8, num_heads=1, start_res=0, end_res=8),
    # simplex attention (keys, additive, instance norm) at 8x8 and 16x16 only, skip blocks, 2 heads, relu, a
    # 4-layer mapping; training/networks.py's spelling (z_dim, channel_base, mapping_num_layers, crop_ratio)
    "simplex": dict(_RUN_NETWORK, z_dim=8, w_dim=8, components_num=3, resolution=16, channel_base=64, channel_max=16,
                    transformer=True, integration="add", norm="instance", kmeans=False, use_pos=True, num_heads=2,
                    mapping_ltnt2ltnt=True, mapping_resnet=True, mapping_num_layers=4, architecture="skip",
                    nonlinearity="relu", start_res=3, end_res=5, crop_ratio=None, noise_mode="random"),
    # duplex without latent positions, style modulation or noise, 'orig' blocks, 2 heads (as CLEVR's default but
    # use_pos off); end_res left to TF's default
    "nopos": dict(_RUN_NETWORK, latent_size=16, dlatent_size=16, components_num=2, resolution=16, fmap_base=32,
                  fmap_max=8, transformer=True, norm="instance", integration="mul", kmeans=True, use_pos=False,
                  num_heads=2, mapping_ltnt2ltnt=True, mapping_resnet=True, style=False, local_noise=False,
                  architecture="orig"),
}


def _get(kw: dict, *names, default=None):
    return next((kw[n] for n in names if n in kw), default)


def tf_generator_variables(kw: dict, rng: np.random.RandomState) -> dict[str, dict[str, np.ndarray]]:
    """The variables of a TF GANformer generator, per network ("G" top level, "mapping", "synthesis"), named and
    shaped as the reference's TF code creates them (in its order), with random values of sensible scale (stored
    weights are the run-time ones divided by their equalized-lr gain)."""
    w = _get(kw, "dlatent_size", "w_dim")  # (= latent_size: TF's residual mapping needs it)
    k, heads, use_pos = kw["components_num"], kw.get("num_heads", 1), kw.get("use_pos", False)
    log2 = int(np.log2(kw["resolution"]))
    layers, lrmul = _get(kw, "mapping_layersnum", "mapping_num_layers", default=8), kw.get("mapping_lrmul", 0.01)
    base, top_fmaps = _get(kw, "fmap_base", "channel_base"), _get(kw, "fmap_max", "channel_max")
    start, end = kw.get("start_res", 0), kw.get("end_res", 20)
    arch, kmeans, channels = kw.get("architecture", "skip"), kw.get("kmeans", False), kw["num_channels"]

    def nf(stage):
        return int(np.clip(int(base / 2.0 ** stage), 1, top_fmaps))

    def arr(*shape, scale=1.0, shift=0.0):
        return (shift + rng.standard_normal(shape) * scale).astype(np.float32)

    def dense(out, scope, fin, fout, lr=1.0):  # dense_layer + apply_bias_act: <scope>/weight, <scope>/bias
        out[f"{scope}/weight"], out[f"{scope}/bias"] = arr(fin, fout) / lr, arr(fout, scale=0.2) / lr

    def attention(out, scope, from_dim, to_dim, dim, from_pos, to_pos):  # transformer_layer (from_pos: its width)
        for name, fin in (("query", from_dim), ("key", to_dim), ("value", to_dim), ("from_pos", from_pos),
                          ("to_pos", to_pos)):
            if fin:
                out[f"{scope}/weight_{name}"], out[f"{scope}/bias_{name}"] = arr(fin, dim), arr(dim, scale=0.2)
        if kmeans and scope.endswith("l2n"):
            out[f"{scope}/toasgn_init"] = arr(1, heads, k, 2 * dim // heads)
            out[f"{scope}/iter_0/st_weights"] = arr(heads, 1, 2 * dim // heads, scale=0.3, shift=1.0)
        out[f"{scope}/weight_out"], out[f"{scope}/bias_out"] = arr(dim, dim), arr(dim, scale=0.2)

    top = {"ltnt_emb/emb": rng.uniform(size=(k, w)).astype(np.float32), "dlatent_avg": arr(w, scale=0.5)}
    mapping = {}
    for prefix in ("", "global/"):  # the k local latents' MLP (with self-attention), then the global one's
        for i in range(layers // 2):
            if not prefix and kw.get("mapping_ltnt2ltnt"):
                attention(mapping, f"AttLayer_{i}", w, w, w, w if use_pos else 0, w if use_pos else 0)
            dense(mapping, f"{prefix}Dense{i}_0", w, w, lrmul)
            dense(mapping, f"{prefix}Dense{i}_1", w, w, lrmul)
        dense(mapping, f"{prefix}Dense{layers // 2 - 1}", w, w, lrmul)

    synthesis = {f"noise{i}": arr(1, 1, 2 ** ((i + 5) // 2), 2 ** ((i + 5) // 2)) for i in range(2 * log2 - 2)}

    def modulated(scope, fin, fout, kernel):
        synthesis[f"{scope}/weight"] = arr(kernel, kernel, fin, fout)
        synthesis[f"{scope}/mod_weight"], synthesis[f"{scope}/mod_bias"] = arr(w, fin), arr(fin, scale=0.2)

    def layer(scope, fin, fout, res):
        modulated(scope, fin, fout, 3)
        if start <= res < end:
            attention(synthesis, f"{scope}/AttLayer_l2n", fout, w, fout, kw.get("pos_dim") or w, w if use_pos else 0)
        if kw.get("local_noise", True):
            synthesis[f"{scope}/noise_strength"] = np.array(rng.standard_normal() * 0.3, np.float32)
        synthesis[f"{scope}/bias"] = arr(fout, scale=0.2)

    def torgb(scope, fin, res):
        if res == log2 and res <= end:
            modulated(f"{scope}/extraLayer", fin, fin, 3)
        modulated(scope, fin, channels, 1)
        synthesis[f"{scope}/bias"] = arr(channels, scale=0.2)

    synthesis["4x4/Const/const"] = arr(1, nf(1), 4, 4)
    layer("4x4/Conv", nf(1), nf(1), 2)
    if arch == "skip":
        torgb("4x4/ToRGB", nf(1), 2)
    for res in range(3, log2 + 1):
        s = f"{2 ** res}x{2 ** res}"
        layer(f"{s}/Conv0_up", nf(res - 2), nf(res - 1), res)
        layer(f"{s}/Conv1", nf(res - 1), nf(res - 1), res)
        if arch == "resnet":
            synthesis[f"{s}/Skip/weight"] = arr(1, 1, nf(res - 2), nf(res - 1))
        if arch == "skip" or res == log2:
            torgb(f"{s}/ToRGB", nf(res - 1), res)
    return {"G": top, "mapping": mapping, "synthesis": synthesis}


def reference_variables(kw: dict, variables: dict) -> dict:
    """The converter's copy: what it reads under another name, or needs although TF never creates it (the module
    docstring says why)."""
    out = copy.deepcopy(variables)
    mapping = out["mapping"]
    last = _get(kw, "mapping_layersnum", "mapping_num_layers", default=8) // 2 - 1
    for prefix in ("", "global/"):
        for leaf in ("weight", "bias"):
            mapping.setdefault(f"{prefix}Dense3/{leaf}", mapping[f"{prefix}Dense{last}/{leaf}"])
    log2 = int(np.log2(kw["resolution"]))
    for name in [n for n in out["synthesis"] if n.startswith(f"{2 ** log2}x{2 ** log2}/ToRGB/extraLayer/")]:
        out["synthesis"]["256x256" + name[name.index("/"):]] = out["synthesis"][name]
    if not kw.get("use_pos"):
        w = _get(kw, "dlatent_size", "w_dim")
        for net in ("mapping", "synthesis"):
            for name in [n for n in out[net] if n.endswith("/weight_query")]:
                scope, dim = name.rsplit("/", 1)[0], out[net][name].shape[1]
                for side in ("to", "from") if net == "mapping" else ("to",):
                    out[net][f"{scope}/weight_{side}_pos"] = np.zeros((w, dim), np.float32)
                    out[net][f"{scope}/bias_{side}_pos"] = np.zeros(dim, np.float32)
    return out


def reference_converter(loader, resolution: int):
    """The reference's convert_tf_generator, its parameter patterns for `b256.conv_last` renamed to the last block
    (the module docstring says why); nothing else of it changed."""
    original = loader._populate_module_params

    def populate(module, *patterns):
        return original(module, *[p.replace(r"b256\.", rf"b{resolution}\.") if isinstance(p, str) else p
                                  for p in patterns])

    def convert(tf_Gs):
        loader._populate_module_params = populate
        try:
            return loader.convert_tf_generator(tf_Gs)
        finally:
            loader._populate_module_params = original
    return convert


def tf_pickle(kw: dict, variables: dict[str, dict[str, np.ndarray]], path: Path, build_module_src: str | None = None
              ) -> Path:
    """Write `(G, D, Gs)` as a TF-era GANformer pickle (devkit.persistence_pickle.dump_tf_generator)."""
    from devkit.persistence_pickle import dump_tf_generator

    return dump_tf_generator(path, kw, variables, build_module_src,
                             ("G_GANformer", "G_mapping", "G_synthesis", "D_GANformer"))


def fixture_variables(name: str) -> dict[str, dict[str, np.ndarray]]:
    return tf_generator_variables(CONFIGS[name], np.random.RandomState(4321 + len(name)))


def fixture_z(kw: dict) -> torch.Tensor:
    """(len(SEEDS), k, z_dim) as the reference's generate.py draws z (`torch.randn([1, k, z_dim])`), seeded."""
    k, z_dim = kw["components_num"] + 1, _get(kw, "latent_size", "z_dim")
    zs = []
    for s in SEEDS:
        torch.manual_seed(s)
        zs.append(torch.randn([1, k, z_dim]))
    return torch.cat(zs)


def reference_outputs(Gs, kw: dict) -> dict[str, torch.Tensor]:
    z = fixture_z(kw)
    with torch.no_grad():
        out = {f"ws.{label}": Gs(z, None, truncation_psi=psi, return_img=False, return_ws=True)[0]
               for label, psi in (("psi1", 1.0), ("psi07", PSI))}
        img, att = Gs(z, None, truncation_psi=PSI, noise_mode="const", return_att=True)
        out.update({"img.const": img, "att.const.0": att[:1],
                    "img.none": Gs(z, None, truncation_psi=PSI, noise_mode="none")[0]})
    return out


def outputs(G, kw: dict) -> dict[str, torch.Tensor]:
    """The same from models/ganformer.py's Generator."""
    z = fixture_z(kw)
    with torch.no_grad():
        out = {f"ws.{label}": G.mapping(z, None, G.pos, truncation_psi=psi) for label, psi in (("psi1", 1.0),
                                                                                                ("psi07", PSI))}
        img, att = G(z, truncation_psi=PSI, noise_mode="const", return_attention=True)
        out.update({"img.const": img, "att.const.0": att[:1],
                    "img.none": G(z, truncation_psi=PSI, noise_mode="none")})
    return out


def main(checkout: Path) -> None:
    import tempfile

    from devkit import reference_commit
    from devkit.ganformer_parity import _stand_ins
    from devkit.persistence_pickle import save_tf_fixture

    torch.set_num_threads(1)
    _stand_ins()
    sys.path.insert(0, str(checkout / "pytorch_version"))
    import loader  # the reference's converter (pytorch_version/loader.py)

    fixtures = {}
    for name, kw in CONFIGS.items():
        variables = fixture_variables(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = tf_pickle(kw, reference_variables(kw, variables), Path(tmp) / f"{name}.pkl")
            with open(path, "rb") as f:
                tf_G, tf_D, tf_Gs = loader._LegacyUnpickler(f).load()
        Gs = reference_converter(loader, kw["resolution"])(tf_Gs).float().eval()
        fixtures[name] = (kw, variables, reference_outputs(Gs, kw))
        print(name, {k: tuple(v.shape) for k, v in fixtures[name][2].items()})
    save_tf_fixture(FIXTURE, fixtures, f"dorarad/gansformer@{reference_commit(checkout)} pytorch_version/loader.py "
                                       "convert_tf_generator")
    print("wrote", FIXTURE.relative_to(ROOT), f"({FIXTURE.stat().st_size // 1024} KiB)")


def fixture(name: str) -> tuple[dict, dict[str, dict[str, np.ndarray]], dict[str, torch.Tensor]]:
    """(TF kwargs, TF variables per network, the reference's outputs) of a stored fixture."""
    from devkit.persistence_pickle import load_tf_fixture

    return load_tf_fixture(FIXTURE, name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    import devkit  # noqa: F401  (registers the pack as the package `diffugan`)

    main(Path(sys.argv[1]).resolve())
