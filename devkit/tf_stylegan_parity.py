"""Parity of the StyleGAN loader's TensorFlow path with NVIDIA's own conversion, on small random-weight networks.

NVlabs' StyleGAN2 and StyleGAN2-ADA TensorFlow releases pickle their networks as `(G, D, Gs)` tuples of
`dnnlib.tflib.network.Network` objects; NVIDIA's PyTorch port converts them on load (stylegan2-ada-pytorch's
legacy.py). Here the TF variables of small generators are laid out as NVlabs' TF code names and shapes them
(`tf_generator_variables`, written from training/networks_stylegan2.py's scopes: `mapping/Dense<i>`,
`mapping/LabelEmbed`, `synthesis/noise<i>`, `synthesis/<r>x<r>/{Const,Conv,Conv0_up,Conv1,ToRGB,Skip}`, `lod`,
`dlatent_avg`), filled from a seeded numpy generator and pickled as TF networks are (devkit/persistence_pickle.py).
NVIDIA's converter — run from a checkout given on the command line, never copied here — turns `Gs` into its
PyTorch generator; its mapping and synthesis outputs (fixed z as its gen_images.py draws them, truncation, noise
modes) are stored, with the variables, in tests/models/stylegan_tf_reference.safetensors. tests/models/
test_stylegan.py writes the same pickles from those variables and compares models/stylegan.py's outputs.

    git clone https://github.com/NVlabs/stylegan2-ada-pytorch /tmp/sg2ada
    .venv/bin/python devkit/tf_stylegan_parity.py /tmp/sg2ada    # -> tests/models/stylegan_tf_reference.safetensors
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "models" / "stylegan_tf_reference.safetensors"

# Two small generators: an unconditional config-f layout ('skip'), and a conditional StyleGAN2-ADA one ('resnet',
# its label embedded by mapping/LabelEmbed) with a non-default mapping width.
CONFIGS = {
    "skip": dict(latent_size=16, dlatent_size=16, resolution=32, num_channels=3, fmap_base=128, fmap_max=32,
                 mapping_layers=2),
    "resnet_cond": dict(latent_size=12, dlatent_size=16, label_size=5, resolution=16, num_channels=3,
                        fmap_base=64, fmap_max=24, mapping_layers=3, mapping_fmaps=20, architecture="resnet",
                        truncation_psi=0.5),
}
SEEDS = [0, 7]
PSI = 0.7


def tf_generator_variables(kw: dict, rng: np.random.RandomState) -> dict[str, dict[str, np.ndarray]]:
    """The variables of a TF StyleGAN2 generator, per network ("G" top level, "mapping", "synthesis"), named and
    shaped as NVlabs' TF code creates them, with random values."""
    res_log2 = int(np.log2(kw["resolution"]))
    latent, dlatent, labels = kw["latent_size"], kw["dlatent_size"], kw.get("label_size", 0)
    channels, arch = kw["num_channels"], kw.get("architecture", "skip")

    def nf(stage):
        return int(np.clip(int(kw["fmap_base"] / 2.0 ** stage), 1, kw["fmap_max"]))

    def arr(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    top = {"lod": np.float32(0) * np.ones([], np.float32), "dlatent_avg": arr(dlatent, scale=0.3)}
    mapping = {}
    width_in = latent
    if labels:
        mapping["LabelEmbed/weight"], mapping["LabelEmbed/bias"] = arr(labels, dlatent), arr(dlatent, scale=0.1)
        width_in += dlatent
    width = kw.get("mapping_fmaps", dlatent)
    for i in range(kw["mapping_layers"]):
        out = dlatent if i == kw["mapping_layers"] - 1 else width
        mapping[f"Dense{i}/weight"], mapping[f"Dense{i}/bias"] = arr(width_in, out), arr(out, scale=0.1)
        width_in = out

    synthesis = {}
    num_layers = res_log2 * 2 - 2
    for i in range(num_layers - 1):
        r = 2 ** ((i + 5) // 2)
        synthesis[f"noise{i}"] = arr(1, 1, r, r)

    def layer(scope, fin, fout, kernel):
        synthesis[f"{scope}/weight"] = arr(kernel, kernel, fin, fout)
        synthesis[f"{scope}/mod_weight"] = arr(dlatent, fin)
        synthesis[f"{scope}/mod_bias"] = arr(fin, scale=0.2)
        synthesis[f"{scope}/noise_strength"] = np.float32(rng.standard_normal() * 0.3) * np.ones([], np.float32)
        synthesis[f"{scope}/bias"] = arr(fout, scale=0.1)

    def torgb(scope, fin):
        synthesis[f"{scope}/weight"] = arr(1, 1, fin, channels)
        synthesis[f"{scope}/mod_weight"] = arr(dlatent, fin)
        synthesis[f"{scope}/mod_bias"] = arr(fin, scale=0.2)
        synthesis[f"{scope}/bias"] = arr(channels, scale=0.1)

    synthesis["4x4/Const/const"] = arr(1, nf(1), 4, 4)
    layer("4x4/Conv", nf(1), nf(1), 3)
    if arch == "skip":
        torgb("4x4/ToRGB", nf(1))
    for res in range(3, res_log2 + 1):
        s = f"{2 ** res}x{2 ** res}"
        layer(f"{s}/Conv0_up", nf(res - 2), nf(res - 1), 3)
        layer(f"{s}/Conv1", nf(res - 1), nf(res - 1), 3)
        if arch == "resnet":
            synthesis[f"{s}/Skip/weight"] = arr(1, 1, nf(res - 2), nf(res - 1))
        if arch == "skip" or res == res_log2:
            torgb(f"{s}/ToRGB", nf(res - 1))
    return {"G": top, "mapping": mapping, "synthesis": synthesis}


def tf_pickle(kw: dict, variables: dict[str, dict[str, np.ndarray]], path: Path, build_module_src: str | None = None
              ) -> Path:
    """Write `(G, D, Gs)` as a TF-era StyleGAN2 pickle (devkit.persistence_pickle.dump_tf_generator)."""
    from devkit.persistence_pickle import dump_tf_generator

    return dump_tf_generator(path, kw, variables, build_module_src, ("G_main", "G_main", "G_main", "D_stylegan2"))


def fixture_variables(name: str) -> dict[str, dict[str, np.ndarray]]:
    return tf_generator_variables(CONFIGS[name], np.random.RandomState(1234 + len(name)))


def inputs(kw: dict) -> tuple[torch.Tensor, torch.Tensor | None]:
    z = torch.from_numpy(np.stack([np.random.RandomState(s).randn(kw["latent_size"]) for s in SEEDS])).float()
    c = None
    if kw.get("label_size"):
        c = torch.zeros(len(SEEDS), kw["label_size"])
        c[0, 1] = c[1, 3] = 1
    return z, c


def outputs(G, kw: dict) -> dict[str, torch.Tensor]:
    """What both implementations are compared on: ws at ψ 1 and ψ 0.7, images with constant noise and without."""
    z, c = inputs(kw)
    with torch.no_grad():
        ws = G.mapping(z, c, truncation_psi=1.0)
        ws_t = G.mapping(z, c, truncation_psi=PSI)
        return {"ws": ws, "ws_psi": ws_t, "img_const": G.synthesis(ws_t, noise_mode="const"),
                "img_none": G.synthesis(ws, noise_mode="none")}


def main(checkout: Path) -> None:
    import tempfile

    from devkit import reference_commit
    from devkit.persistence_pickle import save_tf_fixture

    sys.path.insert(0, str(checkout))
    import legacy  # NVIDIA's converter (stylegan2-ada-pytorch)

    fixtures = {}
    for name, kw in CONFIGS.items():
        variables = fixture_variables(name)
        with tempfile.TemporaryDirectory() as tmp:
            path = tf_pickle(kw, variables, Path(tmp) / f"{name}.pkl")
            with open(path, "rb") as f:
                tf_G, tf_D, tf_Gs = legacy._LegacyUnpickler(f).load()
        G = legacy.convert_tf_generator(tf_Gs).float()
        fixtures[name] = (kw, variables, outputs(G, kw))
        print(name, {k: tuple(v.shape) for k, v in fixtures[name][2].items()})
    save_tf_fixture(FIXTURE, fixtures, f"NVlabs/stylegan2-ada-pytorch@{reference_commit(checkout)} "
                                       "legacy.convert_tf_generator")
    print("wrote", FIXTURE.relative_to(ROOT), f"({FIXTURE.stat().st_size // 1024} KiB)")


def fixture(name: str) -> tuple[dict, dict[str, dict[str, np.ndarray]], dict[str, torch.Tensor]]:
    """(TF kwargs, TF variables per network, the reference's outputs) of a stored fixture."""
    from devkit.persistence_pickle import load_tf_fixture

    return load_tf_fixture(FIXTURE, name)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
