"""The zoo's training scripts, end to end on a tiny stand-in data set (drawn smileys in the emoji set's file format):
the DiT trainer (fresh, then continued with --init and the low-noise emphasis, then with style conditioning from
the zoo CLIP), the CLIP trainer, the ControlNet trainer, and the model cards written from their logs. Tiny models
and a few steps: this checks the scripts' plumbing and logs, not what the real runs learn (their figures are in
zoo/README.md)."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from diffugan.models import checkpoints as ck
from diffugan.models import clip_style as cs
from diffugan.models import dit, taesd
from diffugan.models import stylegan as sg
from diffugan.models import vit_controlnet as vc
from devkit.drawn import smiley

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
import train_importance_scorer  # noqa: E402
import train_zoo_clip  # noqa: E402
import train_zoo_controlnet  # noqa: E402
import train_zoo_dit  # noqa: E402
import train_zoo_stylegan  # noqa: E402
import train_zoo_vae  # noqa: E402
import eval_zoo_pipeline  # noqa: E402
import zoo_data  # noqa: E402
import zoo_manifest  # noqa: E402


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> tuple[Path, Path]:
    """12 emoji-format records (64 px uint8 NHWC + records with style, category, split) and an untrained VAE."""
    root = tmp_path_factory.mktemp("zoo")
    data = root / "data"
    data.mkdir()
    images, records = [], []
    for i in range(12):
        img = smiley(64, "open" if i % 2 else "smile")[0]
        img = torch.roll(img, shifts=(i % 3 - 1, i % 4 - 2), dims=(1, 2))
        images.append(((img * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0))
        style, category = zoo_data.STYLES[i % 2], zoo_data.CATEGORIES[i % 3]
        records.append({"name": f"smiley {i}", "style": style, "category": category,
                        "caption": f"smiley {i}, {category.lower()}, {style} style",
                        "split": "heldout" if i >= 8 else "train"})
    save_file({"images": torch.stack(images).contiguous()}, str(data / "emoji.safetensors"))
    (data / "emoji.json").write_text(json.dumps({"resolution": 64, "records": records}))
    torch.manual_seed(0)
    vae_path = root / "vae.safetensors"
    taesd.save_vae(taesd.TinyAutoencoder().eval(), vae_path)
    return data, vae_path


def test_dit_trainer_runs_continues_with_init_and_the_card_tells_both_runs(tiny_set, tmp_path):
    data, vae = tiny_set
    small = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch", "4", "--eval-every", "2"]
    first = tmp_path / "a" / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(first), "--steps", "2", *small])
    log = json.loads(first.with_suffix(".json").read_text())
    assert log["steps_done"] == 2 and log["init"] is None
    for key in ("eps_mse_t100", "eps_mse_t900", "eps_mse_mean", "x0_mse_t100", "x0_mse_t300", "x0_mse_t600"):
        assert torch.isfinite(torch.tensor(log["final"][key])), key
    assert log["final"]["eps_mse_mean"] == pytest.approx(
        sum(log["final"][f"eps_mse_t{t}"] for t in train_zoo_dit.EVAL_T) / len(train_zoo_dit.EVAL_T))

    second = tmp_path / "b" / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(second), "--steps", "2",
                        "--init", str(first), "--low-noise", "1.0", "--seed", "1", *small])
    log2 = json.loads(second.with_suffix(".json").read_text())
    assert log2["init"]["path"] == str(first) and log2["init"]["final"] == log["final"]
    # the continued run starts from the first run's weights, not from its own seed's random ones (two warm-up
    # steps move them very little)
    w1, w2 = dit.load_dit(first).state_dict(), dit.load_dit(second).state_dict()
    assert max(float((w2[k].float() - w1[k].float()).abs().max()) for k in w1) < 1e-2
    card = zoo_manifest.card_dit("dit.safetensors", log2)
    assert "in runs each continuing the last" in card and "refiner emphasis" in card
    assert "x0-MSE" in card
    # an init of another latent size (blocks copied from a smaller DiT) is named as the origin, not as a run of this
    other = json.loads(json.dumps(log2))
    other["init"]["config"]["input_size"] = 4
    card = zoo_manifest.card_dit("dit.safetensors", other)
    assert "Its blocks started from `dit/dit.safetensors` (4² latents)" in card
    assert "in runs each continuing the last" not in card

    wrong = tmp_path / "c" / "dit.safetensors"
    with pytest.raises(SystemExit, match="--init"):  # another architecture is refused before any training
        train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(wrong), "--steps", "1",
                            "--init", str(first), "--hidden", "64", "--depth", "1", "--heads", "2"])


def test_restoration_batch_leads_back_to_the_clean_latent_along_the_path_an_euler_refine_takes():
    ab = torch.cumprod(1 - dit.linear_betas(), 0).float()
    gen = torch.Generator().manual_seed(0)
    z0 = torch.randn(6, 4, 32, 32, generator=gen)
    z_deg = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(z0, 4), scale_factor=4)
    noise = torch.randn(z0.shape, generator=gen)
    t = torch.tensor([5, 50, 150, 300, 500, 900])
    rows = torch.tensor([1.0, 1, 1, 1, 1, 0])
    xt, target = train_zoo_dit.restoration_batch(z0, t, noise, ab, z_deg, rows, 300)
    a = ab[t][:, None, None, None]
    # the x0 read off the target is the clean latent, for every row
    assert torch.allclose((xt - (1 - a).sqrt() * target) / a.sqrt(), z0, atol=1e-3)
    # a row left out is the plain noised latent and its noise
    assert torch.equal(target[5], noise[5])
    assert torch.allclose(xt[5], a[5].sqrt() * z0[5] + (1 - a[5]).sqrt() * noise[5])
    # at and above full_t x_t starts from the degraded latent itself, as a refine started there does
    for i in (3, 4):
        assert torch.allclose(xt[i], a[i].sqrt() * z_deg[i] + (1 - a[i]).sqrt() * noise[i], atol=1e-5)
    # below it the degradation left is the share an Euler step with the right x0 leaves: sigma(t) / sigma(full_t)
    sigma = ((1 - ab) / ab).sqrt()
    for i in (0, 1, 2):
        left = (xt[i] - (1 - a[i]).sqrt() * noise[i]) / a[i].sqrt() - z0[i]
        assert torch.allclose(left, (sigma[t[i]] / sigma[300]) * (z_deg[i] - z0[i]), atol=1e-3)
    # so the extra target stays bounded by d / sigma(full_t), however small t is
    extra = (target[:5] - noise[:5]).abs().max()
    assert float(extra) <= float((z_deg - z0).abs().max() / sigma[300]) + 1e-4


class _Oracle(torch.nn.Module):
    """An ε-predictor that always points at `target`: the x0 it implies at every step is `target` itself."""

    def __init__(self, target: torch.Tensor):
        super().__init__()
        self.target, self.config = target, SimpleNamespace(null_class=0)
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # gives the module a device
        ab = torch.cumprod(1 - dit.linear_betas(), 0).double()
        self.sigma = ((1 - ab) / ab).sqrt()

    def forward(self, xc, t, y, style=None):
        sigma = float(np.interp(float(t[0]), np.arange(len(self.sigma)), self.sigma.numpy()))
        return (xc * (sigma ** 2 + 1) ** 0.5 - self.target[: len(xc)]) / sigma


def test_refine_figures_measure_a_whole_refine_against_doing_nothing():
    gen = torch.Generator().manual_seed(0)
    z, z_deg = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    style = torch.zeros(3, 4)
    start = float((z_deg - z).square().mean())
    perfect = train_zoo_dit.refine_figures(_Oracle(z), z, z_deg, style)
    idle = train_zoo_dit.refine_figures(_Oracle(z_deg), z, z_deg, style)  # every step's x0: the degraded start
    assert perfect["refine_start_mse"] == pytest.approx(start) == idle["refine_start_mse"]
    for s in train_zoo_dit.REFINE_STRENGTHS:
        assert perfect[f"refine_mse_s{s}"] < 1e-6 * start  # a refiner that knows the clean latent restores it
        assert idle[f"refine_mse_s{s}"] == pytest.approx(start, rel=1e-4)  # one that keeps the start changes nothing


def test_dit_trainer_with_the_refiners_task_logs_how_far_it_restores(tiny_set, tmp_path):
    data, vae = tiny_set
    out = tmp_path / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(out), "--steps", "2", "--hidden", "32",
                        "--depth", "1", "--heads", "2", "--batch", "4", "--eval-every", "2", "--degrade", "0.5"])
    final = json.loads(out.with_suffix(".json").read_text())["final"]
    for t in (100, 300):
        # doing nothing (the degraded start) is the baseline the model's x0 is measured against
        assert final[f"restore_start_mse_t{t}"] > 0 and torch.isfinite(torch.tensor(final[f"restore_x0_mse_t{t}"]))
    assert final["restore_start_mse_t100"] < final["restore_start_mse_t300"]  # less of d is left at t 100
    # and whole refines at the workflows' strengths, beside the blurred latents' own distance
    assert final["refine_start_mse"] > 0
    assert all(torch.isfinite(torch.tensor(final[f"refine_mse_s{s}"])) for s in train_zoo_dit.REFINE_STRENGTHS)
    # the degraded latents: every image of the split blurred to one of DEGRADE_PX and encoded, cached
    cached = list(data.glob("latents-*-train-*-degraded.safetensors"))
    assert len(cached) == 1
    from safetensors.torch import load_file
    t = load_file(str(cached[0]))
    z_clean, _ = train_zoo_dit.cached_latents(vae, data, "train")
    assert t["latents"].shape == z_clean.shape and set(t["px"].tolist()) <= set(train_zoo_dit.DEGRADE_PX)
    blurred = t["px"] < 64  # the tiny set is 64 px: at 64 the image is unchanged, below it blurred
    assert blurred.any() and (~blurred).any()
    scale = z_clean.abs().mean()
    rounding = (t["latents"][~blurred] - z_clean[~blurred]).abs().mean() / scale
    blur = (t["latents"][blurred] - z_clean[blurred]).abs().mean() / scale
    assert rounding < 0.02 and blur > 3 * rounding, (rounding, blur)  # bf16 rounding only / the blur's change
    card = zoo_manifest.card_dit("dit.safetensors", json.loads(out.with_suffix(".json").read_text()))
    assert "restor" in card


def test_controlnet_trainer_runs_and_logs_before_and_after(tiny_set, tmp_path):
    data, vae = tiny_set
    base = tmp_path / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(base), "--steps", "1", "--hidden", "32",
                        "--depth", "2", "--heads", "2", "--batch", "4", "--eval-every", "1"])
    out = tmp_path / "cn" / "controlnet.safetensors"
    train_zoo_controlnet.main(["--data", str(data), "--dit", str(base), "--vae", str(vae), "--out", str(out),
                               "--depth", "1", "--steps", "2", "--batch", "4", "--eval-images", "4"])
    net = vc.load_controlnet(out)
    net.check_fits(dit.load_dit(base))
    log = json.loads(out.with_suffix(".json").read_text())
    assert [e["step"] for e in log["evals"]] == [0, 2]
    # before training the zero-initialised projections make the ControlNet a no-op: equal losses
    assert log["evals"][0]["eps_mse_with_control"] == pytest.approx(log["evals"][0]["eps_mse_without_control"])
    e = log["final"]["edge_f1"]
    assert 0 <= e["with_controlnet"] <= 1 and 0 <= e["without_controlnet"] <= 1 and e["images"] == 4
    assert "ViT ControlNet" in zoo_manifest.card_controlnet(out.name, log)


@pytest.fixture(scope="module")
def tiny_clip(tiny_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clip") / "clip.safetensors"
    train_zoo_clip.main(["--data", str(tiny_set[0]), "--out", str(out), "--steps", "2", "--batch", "4",
                         "--eval-every", "2"])
    return out


def test_clip_trainer_logs_held_out_retrieval_and_ships_only_what_it_trained(tiny_clip):
    log = json.loads(tiny_clip.with_suffix(".json").read_text())
    assert [e["step"] for e in log["evals"]] == [0, 2] and log["steps_done"] == 2
    for split in ("heldout", "train"):
        e = log["final"][split]
        for key in ("caption_top1", "caption_top5", "name_top1", "name_top5", "style_acc", "category_acc"):
            assert 0 <= e[key] <= 1, key
        assert e["caption_top1"] <= e["caption_top5"]
    assert log["locked_parameters"] > 20e6 and 1e6 < log["trained_parameters"] < 5e6
    tensors, _ = ck.load_safetensors(tiny_clip)
    assert not any(k.startswith(cs.TEXT_TOWER_PREFIX) for k in tensors)
    clip = cs.load_clip(tiny_clip)  # the locked tower comes back from its checked local copy
    assert clip.arch == "DiffuGAN-CLIP-Emoji" and clip.encode_texts(["smiley 1"]).shape == (1, 256)


def test_dit_trainer_adds_style_conditioning_to_a_dit_without_it(tiny_set, tiny_clip, tmp_path):
    data, vae = tiny_set
    small = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch", "6", "--eval-every", "2"]
    base = tmp_path / "a" / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(base), "--steps", "1", *small])
    styled = tmp_path / "b" / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(styled), "--steps", "2",
                        "--init", str(base), "--style-clip", str(tiny_clip), *small])
    model = dit.load_dit(styled)
    assert model.config.style_dim == 256
    log = json.loads(styled.with_suffix(".json").read_text())
    assert log["style_clip"] == cs.load_clip(tiny_clip).identity == model.style_clip  # recorded in the file too
    for key in ("eps_mse_mean", "eps_mse_mean_prompt", "eps_mse_mean_none", "eps_mse_t100_prompt"):
        assert torch.isfinite(torch.tensor(log["final"][key])), key
    # the base weights carry over; the new style projection starts at zero (two warm-up steps move it little)
    before = dit.load_dit(base).state_dict()
    after = model.state_dict()
    assert max(float((after[k].float() - before[k].float()).abs().max()) for k in before) < 1e-2
    assert float(after["style_proj.weight"].abs().max()) < 1e-2
    t2i = log["text_to_image"]  # text -> image judged by the zoo CLIP, with the prompt and without
    for key in ("prompt_clip_score", "unconditional_clip_score", "real_clip_score", "prompt_fd", "unconditional_fd",
                "real_train_fd"):
        assert torch.isfinite(torch.tensor(t2i[key])), key
    assert t2i["captions"] == 4 and (styled.parent / t2i["samples"]).is_file()


def test_controlnet_trainer_carries_the_dits_styles_and_refuses_another_clip(tiny_set, tiny_clip, tmp_path):
    """With --style-clip the branch trains under the DiT's style conditioning (batches draw styles as the DiT's
    training does); a CLIP other than the one the DiT was trained on is refused by name."""
    data, vae = tiny_set
    small = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch", "4", "--eval-every", "1"]
    styled = tmp_path / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(styled), "--steps", "1",
                        "--style-clip", str(tiny_clip), *small])
    out = tmp_path / "cn" / "controlnet.safetensors"
    train_zoo_controlnet.main(["--data", str(data), "--dit", str(styled), "--vae", str(vae), "--out", str(out),
                               "--style-clip", str(tiny_clip), "--depth", "1", "--steps", "2", "--batch", "4",
                               "--eval-images", "4"])
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["settings"]["style_clip"] == str(tiny_clip) and [e["step"] for e in log["evals"]] == [0, 2]
    assert "styles as in the DiT's training" in zoo_manifest.card_controlnet(out.name, log)
    plain = tmp_path / "plain.safetensors"  # a DiT without style conditioning: --style-clip makes no sense for it
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(plain), "--steps", "1", *small])
    with pytest.raises(SystemExit, match="was not trained with the style of --style-clip"):
        train_zoo_controlnet.main(["--data", str(data), "--dit", str(plain), "--vae", str(vae), "--out",
                                   str(tmp_path / "x.safetensors"), "--style-clip", str(tiny_clip), "--steps", "1"])


def test_stylegan_trainer_writes_a_text_conditioned_generator_and_resumes(tiny_set, tiny_clip, tmp_path, capsys):
    data, _ = tiny_set
    out = tmp_path / "sg" / "stylegan.safetensors"
    small = ["--data", str(data), "--clip", str(tiny_clip), "--out", str(out), "--batch", "4", "--channel-base", "256",
             "--channel-max", "16", "--eval-every", "2", "--r1-every", "2"]
    train_zoo_stylegan.main([*small, "--steps", "2"])
    G = sg.load_stylegan(out)
    log = json.loads(out.with_suffix(".json").read_text())
    assert G.c_dim == 256 and G.img_resolution == 64
    assert G.style_clip == log["style_clip"] == cs.load_clip(tiny_clip).identity  # recorded in the file
    assert [e["step"] for e in log["evals"]] == [2] and log["steps_done"] == 2
    for entry in (log["final"], log["final_psi07"]):
        for key in ("prompt_clip_score", "unconditional_clip_score", "real_clip_score", "prompt_fd",
                    "unconditional_fd", "real_train_fd"):
            assert torch.isfinite(torch.tensor(entry[key])), key
        assert entry["captions"] == 4
    assert log["final_psi07"]["psi"] == 0.7 and (out.parent / log["final"]["samples"]).is_file()
    assert "text-conditioned" in zoo_manifest.card_stylegan(out.name, log)
    capsys.readouterr()
    train_zoo_stylegan.main([*small, "--steps", "3"])  # continues from <out>.train.pt
    assert "resumed at step 2" in capsys.readouterr().out


def test_vae_trainer_decoder_only_keeps_the_latents_the_dit_was_trained_on(tiny_set, tmp_path):
    """--decoder-only: the encoder and scale/shift are the --init file's, bit for bit (so a DiT trained on its
    latents stays valid); the decoder changes; without --init it is refused, saying what to give."""
    data, vae = tiny_set
    out = tmp_path / "dec" / "vae.safetensors"
    train_zoo_vae.main(["--data", str(data), "--out", str(out), "--init", str(vae), "--size", "64", "--batch", "2",
                        "--crop", "32", "--full-crop", "64", "--full-batch", "2", "--eval-every", "2", "--steps", "3",
                        "--decoder-only", "--lr", "1e-2"])
    before, after = taesd.load_vae(vae).state_dict(), taesd.load_vae(out).state_dict()
    enc = [k for k in before if not k.startswith("taesd_decoder.")]
    assert enc and all(torch.equal(before[k], after[k]) for k in enc)  # encoder, vae_scale, vae_shift
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("taesd_decoder."))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    assert torch.equal(taesd.load_vae(vae).encode(x), taesd.load_vae(out).encode(x))
    with pytest.raises(SystemExit):
        train_zoo_vae.main(["--data", str(data), "--out", str(tmp_path / "x.safetensors"), "--decoder-only"])
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["steps_done"] == 3
    # a decoder-only run from a file with a log: the latents' statistics are that file's (same encoder, same data),
    # taken from its log, not encoded again (a marked value in the log shows which)
    log["latent_sd1_std"] += 0.125
    out.with_suffix(".json").write_text(json.dumps(log))
    again = tmp_path / "dec2" / "vae.safetensors"
    train_zoo_vae.main(["--data", str(data), "--out", str(again), "--init", str(out), "--size", "64", "--batch", "2",
                        "--crop", "32", "--full-crop", "64", "--full-batch", "2", "--eval-every", "2", "--steps", "1",
                        "--decoder-only"])
    log2 = json.loads(again.with_suffix(".json").read_text())
    assert all(log2[k] == log[k] for k in ("latent_sd1_mean", "latent_sd1_std", "latent_raw_absmax_p999"))
    assert [r["steps"] for r in log2["previous_runs"]] == ["3"]


def test_stylegan_discriminator_is_conditional_and_augmentation_keeps_gradients():
    D = train_zoo_stylegan.Discriminator(64, 8, 256, 16)
    x = (torch.rand(4, 3, 64, 64) * 2 - 1).requires_grad_()
    c = torch.nn.functional.normalize(torch.randn(4, 8), dim=1)
    logits = D(x, c)
    assert logits.shape == (4,) and not torch.allclose(logits, D(x, c.roll(1, 0)))
    aug = train_zoo_stylegan.diff_augment(x, torch.Generator().manual_seed(0))
    assert aug.shape == x.shape
    aug.sum().backward()
    assert x.grad is not None  # differentiable, so G learns through it


def test_frechet_distance_matches_the_closed_form():
    """Gaussians with known means and covariances: FD = |mu_a - mu_b|^2 + Tr(Sa + Sb - 2 (Sa Sb)^1/2); for
    diagonal covariances the root is elementwise."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=gen, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    b = (torch.randn(20000, 3, generator=gen, dtype=torch.float64)
         * torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64) + 1)
    va, vb = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = 3 + float((va + vb - 2 * (va * vb).sqrt()).sum())  # = 3 + 4 + 1 + 0
    assert train_zoo_clip.frechet_distance(a, b) == pytest.approx(expected, rel=0.03)
    assert train_zoo_clip.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)


def test_every_judge_sees_images_at_the_clips_size_whatever_size_they_come_in(tiny_clip):
    """judged_images: a render at the CLIP's own 64 px is only clamped; a 128 px one is downscaled (antialiased), so
    a flat colour stays that colour; judged_features embeds exactly those images (the demo, eval_zoo_pipeline and
    bench_refiners score with it, judge_text_to_image too)."""
    size = train_zoo_clip.CLIP_SIZE
    x = torch.rand(3, 3, size, size, generator=torch.Generator().manual_seed(0)) * 1.4 - 0.2
    assert torch.equal(train_zoo_clip.judged_images(x), x.clamp(0, 1))
    flat = torch.full((2, 3, 2 * size, 2 * size), 0.25)
    assert train_zoo_clip.judged_images(flat).shape == (2, 3, size, size)
    assert torch.allclose(train_zoo_clip.judged_images(flat), torch.full((2, 3, size, size), 0.25), atol=1e-5)
    clip = cs.load_clip(tiny_clip)
    big = torch.nn.functional.interpolate(x.clamp(0, 1), scale_factor=2, mode="nearest")
    expected = train_zoo_clip.image_embeddings(clip, train_zoo_clip.judged_images(big))
    assert torch.allclose(train_zoo_clip.judged_features(clip, big), expected)
    assert torch.allclose(expected.norm(dim=1), torch.ones(3), atol=1e-5)


def test_scorer_trainer_on_coarse_and_generated_drafts(tiny_set, tiny_clip, tmp_path, monkeypatch):
    """Targets from the refiner on a mix of coarse drafts and text -> image drafts; the held-out figures come for
    both kinds apart."""
    data, vae = tiny_set
    small = ["--hidden", "32", "--depth", "1", "--heads", "2", "--batch", "6"]
    base = tmp_path / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(base), "--steps", "1",
                        "--style-clip", str(tiny_clip), *small])
    out = tmp_path / "scorer.safetensors"
    train_importance_scorer.main(["--data", str(data), "--dit", str(base), "--vae", str(vae), "--out", str(out),
                                  "--train-drafts", "8", "--heldout-drafts", "4", "--steps", "2", "--train-steps", "2",
                                  "--batch", "4", "--generated-share", "0.5", "--generated-clip", str(tiny_clip),
                                  "--generated-steps", "2"])
    log = json.loads(out.with_suffix(".json").read_text())
    f = log["final"]
    assert f["drafts_generated"] == f["drafts_coarse"] == 2
    for key in ("spearman_learned", "spearman_analytic", "spearman_learned_generated", "spearman_analytic_coarse"):
        assert -1 <= f[key] <= 1, key
    with pytest.raises(SystemExit):  # generated drafts need the CLIP the DiT was trained with
        train_importance_scorer.main(["--data", str(data), "--dit", str(base), "--vae", str(vae), "--out", str(out),
                                      "--generated-share", "0.5"])
    # the log names the DiT its targets came from; the zoo card says whether that is the DiT shipped under its name
    zoo = tmp_path / "zoo"
    (zoo / "dit").mkdir(parents=True)
    monkeypatch.setattr(zoo_manifest, "ZOO", zoo)
    assert zoo_manifest.scorer_dit(log) == "unknown"  # no DiT of that name shipped
    shutil.copyfile(base, zoo / "dit" / "dit.safetensors")
    assert zoo_manifest.scorer_dit(log) == "shipped"
    assert "the shipped one" in zoo_manifest.card_scorer(out.name, log)
    (zoo / "dit" / "dit.safetensors").write_bytes(base.read_bytes() + b" ")  # another file under the same name
    assert zoo_manifest.scorer_dit(log) == "earlier"
    assert "re-distil it" in zoo_manifest.card_scorer(out.name, log)


def _torchrun(script: str, args: list[str], tmp_path: Path) -> None:
    """Runs a trainer unchanged under torchrun with 2 processes on the CPU (gloo), as users with GPUs run it."""
    import os
    import subprocess

    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", str(ROOT / "scripts" / script), *args]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "terminate called without an active exception" in done.stderr:
        # Seen once in a CI run: a worker aborted in torch's gloo teardown at interpreter exit, after the run had
        # finished and rank 0 had written its results. A second run must then succeed from scratch.
        for path in tmp_path.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def test_dit_trainer_runs_under_torchrun_with_two_processes(tiny_set, tmp_path):
    data, vae = tiny_set
    out = tmp_path / "ddp" / "dit.safetensors"
    _torchrun("train_zoo_dit.py", ["--data", str(data), "--vae", str(vae), "--out", str(out), "--steps", "2",
                                   "--hidden", "32", "--depth", "1", "--heads", "2", "--batch", "2",
                                   "--eval-every", "2"], tmp_path)
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["world_size"] == 2 and log["steps_done"] == 2 and [e["step"] for e in log["evals"]] == [2]
    assert torch.isfinite(torch.tensor(log["final"]["eps_mse_mean"]))
    dit.load_dit(out)  # one model, written once (by rank 0)


def test_stylegan_trainer_runs_under_torchrun_with_two_processes(tiny_set, tiny_clip, tmp_path):
    data, _ = tiny_set
    out = tmp_path / "ddp" / "stylegan.safetensors"
    _torchrun("train_zoo_stylegan.py", ["--data", str(data), "--clip", str(tiny_clip), "--out", str(out),
                                        "--steps", "2", "--batch", "2", "--channel-base", "256", "--channel-max",
                                        "16", "--eval-every", "2", "--r1-every", "2"], tmp_path)
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["world_size"] == 2 and log["steps_done"] == 2 and "r1" in log["curve"][-1]
    assert sg.load_stylegan(out).c_dim == 256


def test_vae_trainer_fine_tunes_calibrates_and_resumes(tiny_set, tmp_path, capsys):
    data, vae = tiny_set
    out = tmp_path / "vae" / "vae.safetensors"
    args = ["--data", str(data), "--out", str(out), "--init", str(vae), "--size", "64", "--batch", "2", "--crop",
            "32", "--full-crop", "64", "--full-batch", "2", "--eval-every", "2"]
    train_zoo_vae.main([*args, "--steps", "2"])
    log = json.loads(out.with_suffix(".json").read_text())
    assert log["steps_done"] == 2 and [e["step"] for e in log["evals"]] == [2]
    assert torch.isfinite(torch.tensor(log["final"]["heldout_psnr_db"]))
    assert abs(log["latent_sd1_mean"]) < 1e-3 and abs(log["latent_sd1_std"] - 1) < 1e-3  # calibrated
    taesd.load_vae(out)
    capsys.readouterr()
    train_zoo_vae.main([*args, "--steps", "3"])  # continues from <out>.train.pt
    assert "resumed at step 2" in capsys.readouterr().out


def test_pipeline_evaluation_reports_drafts_and_degraded_images(tiny_set, tiny_clip, tmp_path):
    """scripts/eval_zoo_pipeline.py on tiny models: CLIP figures and the detail ratio for draft, VAE round trip and
    refined; PSNR / SSIM to the originals for degraded held-out images; the sheet."""
    data, vae = tiny_set
    G = tmp_path / "sg" / "stylegan.safetensors"
    train_zoo_stylegan.main(["--data", str(data), "--clip", str(tiny_clip), "--out", str(G), "--batch", "2",
                             "--channel-base", "256", "--channel-max", "16", "--eval-every", "1", "--steps", "1"])
    D = tmp_path / "dit" / "dit.safetensors"
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(D), "--steps", "1", "--hidden", "32",
                        "--depth", "1", "--heads", "2", "--batch", "4", "--eval-every", "1",
                        "--style-clip", str(tiny_clip)])
    out = tmp_path / "pipeline.json"
    eval_zoo_pipeline.main(["--data", str(data), "--stylegan", str(G), "--clip", str(tiny_clip), "--dit", str(D),
                            "--vae", str(vae), "--out", str(out), "--steps", "2", "--limit", "3",
                            "--degrade-px", "16", "--restore-strength", "0.5"])
    r = json.loads(out.read_text())
    assert r["size"] == 64
    for stage in ("draft", "vae", "refined_plain", "refined"):
        assert r[stage]["detail_ratio"] > 0 and torch.isfinite(torch.tensor(r[stage]["prompt_fd"]))
    d = r["degraded"]
    assert d["images"] == 3 and d["px"] == 16 and d["strength"] == 0.5
    for stage in ("degraded", "vae", "refined", "refined_added", "vae_keep_coarse", "refined_keep_coarse"):
        assert 0 < d[stage]["ssim"] <= 1 and d[stage]["psnr_db"] > 0
    assert out.with_suffix(".png").is_file()
    card = zoo_manifest.card_pipeline(r)
    assert "degraded held-out images (3, down to 16 px and back), refined with their caption at strength 0.5" in card
    assert "refined + Keep Coarse PSNR" in card


def test_unet_trainer_runs_logs_the_dits_figures_snapshots_and_writes_a_loadable_file(tiny_set, tiny_clip, tmp_path):
    import train_zoo_unet

    from diffugan.models import film_unet as fu

    data, vae = tiny_set
    out = tmp_path / "unet" / "unet.safetensors"
    train_zoo_unet.main(["--data", str(data), "--vae", str(vae), "--style-clip", str(tiny_clip), "--out", str(out),
                         "--steps", "3", "--channels", "16", "--mults", "1,2", "--res-blocks", "1", "--attention", "1",
                         "--heads", "2", "--batch", "4", "--eval-every", "2"])
    log = json.loads(out.with_suffix(".json").read_text())
    assert [e["step"] for e in log["evals"]] == [2, 3] and log["steps_done"] == 3
    # the mid-run snapshot: the EMA at the step-2 evaluation, with the log as of then
    snap = out.with_name("unet.latest.safetensors")
    snap_log = json.loads(snap.with_suffix(".json").read_text())
    assert snap_log["steps_done"] == 2 and snap_log["final"] == log["evals"][0]
    assert fu.load_film_unet(snap).config == fu.load_film_unet(out).config
    assert not list(out.parent.glob("*.tmp"))
    card = zoo_manifest.card_unet("unet.safetensors", log)
    assert "3 steps, batch 4" in card and f"{log['final']['eps_mse_mean']:.4f}" in card
    for key in ("eps_mse_t100", "eps_mse_t100_none", "eps_mse_mean", "eps_mse_mean_none", "x0_mse_t300"):
        assert torch.isfinite(torch.tensor(log["final"][key])), key
    unet = fu.load_film_unet(out)
    assert unet.style_clip == log["style_clip"] == cs.load_clip(tiny_clip).identity
    assert unet.config.style_dim == log["config"]["style_dim"] > 0
    z = torch.randn(1, 4, 8, 8)
    assert unet(z, torch.tensor([50.0]), torch.zeros(1, unet.config.style_dim)).shape == z.shape
    # a fresh machine resumes from a shipped snapshot with --init (same architecture)
    again = tmp_path / "unet2" / "unet.safetensors"
    small = ["--channels", "16", "--mults", "1,2", "--res-blocks", "1", "--attention", "1", "--heads", "2",
             "--batch", "4", "--eval-every", "2"]
    train_zoo_unet.main(["--data", str(data), "--vae", str(vae), "--style-clip", str(tiny_clip), "--out", str(again),
                         "--steps", "1", "--init", str(out), "--lr", "1e-9", *small])
    w1, w2 = fu.load_film_unet(out).state_dict(), fu.load_film_unet(again).state_dict()
    assert max(float((w1[k] - w2[k]).abs().max()) for k in w1) < 1e-2
    with pytest.raises(SystemExit, match="--init"):
        train_zoo_unet.main(["--data", str(data), "--vae", str(vae), "--style-clip", str(tiny_clip), "--out",
                             str(tmp_path / "unet3" / "u.safetensors"), "--steps", "1", "--init", str(out),
                             *small[:1], "32", *small[2:]])


def test_var_trainer_tokenizer_then_transformer_with_snapshots_and_text_to_image(tiny_set, tiny_clip, tmp_path):
    import train_zoo_var

    from diffugan.models import var as vm

    data, _ = tiny_set
    vq_out = tmp_path / "var" / "vqvae.safetensors"
    common = ["--data", str(data), "--patch-nums", "1,2", "--batch", "4", "--eval-every", "2"]
    train_zoo_var.main(["--stage", "vqvae", "--out", str(vq_out), "--size", "32", "--vocab", "16", "--z-channels",
                        "4", "--ch", "32", "--steps", "3", *common])
    log = json.loads(vq_out.with_suffix(".json").read_text())
    assert [e["step"] for e in log["evals"]] == [2, 3] and 0 < log["final"]["codebook_used"] <= 1
    assert torch.isfinite(torch.tensor([log["final"]["heldout_psnr_db"], log["final"]["heldout_psnr_db_first_1_scales"]
                                        ])).all()
    assert json.loads(vq_out.with_name("vqvae.latest.json").read_text())["steps_done"] == 2
    vq = vm.load_vqvae(vq_out)
    assert vq.config.vocab_size == 16 and vq.config.scales == 2
    card = zoo_manifest.card_var("vqvae.safetensors", log)
    assert "VAR tokenizer" in card and f"**{log['final']['heldout_psnr_db']:.2f} dB** after all scales" in card
    # a fresh machine goes on from the shipped tokenizer: --init takes its weights (step 0 equals it), another
    # architecture is refused before any training
    tok = ["--stage", "vqvae", "--size", "32", "--vocab", "16", "--z-channels", "4", "--ch", "32", *common]
    again = tmp_path / "again" / "vqvae.safetensors"
    train_zoo_var.main([*tok, "--out", str(again), "--init", str(vq_out), "--steps", "1", "--lr", "0"])
    log2 = json.loads(again.with_suffix(".json").read_text())
    assert log2["init"]["path"] == str(vq_out) and log2["init"]["final"] == log["final"] and log2["init"]["steps"] == 3
    for k, v in vm.load_vqvae(again).state_dict().items():
        assert torch.equal(v, vq.state_dict()[k]), k
    with pytest.raises(SystemExit, match="--init vqvae.safetensors is another VQVAE.*vocab_size"):
        train_zoo_var.main([*tok[:5], "32", *tok[6:], "--out", str(tmp_path / "x.safetensors"), "--init", str(vq_out),
                            "--steps", "1"])
    out = tmp_path / "var" / "var.safetensors"
    train_zoo_var.main(["--stage", "var", "--vqvae", str(vq_out), "--style-clip", str(tiny_clip), "--out", str(out),
                        "--depth", "1", "--width", "32", "--heads", "2", "--steps", "3", "--eval-images", "4",
                        *common])
    log = json.loads(out.with_suffix(".json").read_text())
    assert [e["step"] for e in log["evals"]] == [2, 3]
    for key in ("ce", "ce_none", "accuracy"):
        assert torch.isfinite(torch.tensor(log["final"][key])), key
    assert len(log["final"]["ce_per_scale"]) == 2
    t = log["text_to_image"]
    assert {"prompt_clip_score", "prompt_fd", "unconditional_clip_score"} <= set(t)
    model = vm.load_var(out)
    assert model.config.num_classes == 0 and model.config.style_dim == log["config"]["style_dim"] > 0
    assert model.style_clip == log["style_clip"]
    vm.check_pair(vq, model)
    assert out.with_name("var-samples.png").is_file()
    card = zoo_manifest.card_var("var.safetensors", log)
    assert f") {log['final']['ce']:.3f} with the caption" in card and "limits:" in card
    assert f"CLIP score **{t['prompt_clip_score']:.3f}** with the prompt" in card
    # the transformer goes on from a saved one too (the shipped one on a fresh machine); another width is refused
    tr = ["--stage", "var", "--vqvae", str(vq_out), "--style-clip", str(tiny_clip), "--depth", "1", "--heads", "2",
          "--eval-images", "4", *common]
    again = tmp_path / "again" / "var.safetensors"
    train_zoo_var.main([*tr, "--width", "32", "--out", str(again), "--init", str(out), "--steps", "1", "--lr", "0"])
    log2 = json.loads(again.with_suffix(".json").read_text())
    assert log2["init"]["path"] == str(out) and log2["init"]["steps"] == 3
    for k, v in vm.load_var(again).state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
    with pytest.raises(SystemExit, match="--init var.safetensors is another VAR.*embed_dim"):
        train_zoo_var.main([*tr, "--width", "64", "--out", str(tmp_path / "y.safetensors"), "--init", str(out),
                            "--steps", "1"])
    with pytest.raises(SystemExit, match="--patch-nums has 3 scales but the tokenizer vqvae.safetensors .* on 2"):
        train_zoo_var.main(["--stage", "var", "--vqvae", str(vq_out), "--style-clip", str(tiny_clip), "--out",
                            str(tmp_path / "other.safetensors"), "--steps", "1", *common[:2], "--patch-nums", "1,2,3"])


def test_ganformer_trainer_writes_a_loadable_snapshot_resumes_and_compares_attention_as_importance(
        tiny_set, tiny_clip, tmp_path, capsys):
    import train_zoo_ganformer

    from diffugan.models import ganformer as gf
    from diffugan.models import importance

    data, vae = tiny_set
    refiner = tmp_path / "dit.safetensors"  # the importance targets: where this DiT's refinement changes a draft
    train_zoo_dit.main(["--data", str(data), "--vae", str(vae), "--out", str(refiner), "--steps", "1", "--hidden",
                        "32", "--depth", "1", "--heads", "2", "--batch", "4", "--eval-every", "1"])
    scorer = tmp_path / "scorer.safetensors"
    torch.manual_seed(0)
    importance.save_scorer(importance.LearnedScorer().eval(), scorer)
    out = tmp_path / "gf" / "ganformer.pkl"
    small = ["--data", str(data), "--clip", str(tiny_clip), "--out", str(out), "--batch", "4", "--components", "2",
             "--z-dim", "16", "--channel-base", "256", "--channel-max", "16", "--eval-every", "2", "--r1-every", "2",
             "--dit", str(refiner), "--vae", str(vae), "--scorer", str(scorer), "--importance-drafts", "4"]
    train_zoo_ganformer.main([*small, "--steps", "3"])
    G = gf.load_ganformer(out)  # the reference's snapshot layout, as the GANformer Loader reads it
    log = json.loads(out.with_suffix(".json").read_text())
    assert G.c_dim == 256 and G.img_resolution == 64 and G.k == 3
    assert G.config.synthesis_kwargs["kmeans"] and (G.config.synthesis_kwargs["start_res"],
                                                    G.config.synthesis_kwargs["end_res"]) == (4, 6)
    assert log["style_clip"] == cs.load_clip(tiny_clip).identity == ck.load_nvidia_pickle(out)["diffugan"]["style_clip"]
    assert [e["step"] for e in log["evals"]] == [2, 3] and log["steps_done"] == 3 and "r1" in log["curve"][-1]
    snap = out.with_name("ganformer.latest.pkl")  # the EMA at the step-2 evaluation, with the log as of then
    snap_log = json.loads(snap.with_suffix(".json").read_text())
    assert snap_log["steps_done"] == 2 and snap_log["final"] == log["evals"][0]
    assert gf.load_ganformer(snap).config == G.config and not list(out.parent.glob("*.tmp"))
    for entry in (log["final"], log["final_psi07"]):
        for key in ("prompt_clip_score", "unconditional_clip_score", "real_clip_score", "prompt_fd",
                    "unconditional_fd", "real_train_fd"):
            assert torch.isfinite(torch.tensor(entry[key])), key
        assert entry["captions"] == 4
    assert log["final_psi07"]["psi"] == 0.7
    assert (out.parent / log["final"]["samples"]).is_file() and (out.parent / log["attention_sheet"]).is_file()
    imp = log["importance"]  # the learned scorer's held-out metric, for the attention maps and both scorers
    assert imp["drafts"] == 4 and imp["refined_at"] == 64
    for key in ("spearman_learned", "spearman_analytic", "spearman_attention_owned", "spearman_attention_border",
                "spearman_attention_owned_all_layers", "spearman_attention_border_all_layers"):
        assert -1 <= imp[key] <= 1, key
    assert imp["spearman_attention_border"] == pytest.approx(-imp["spearman_attention_owned"])
    again = train_zoo_ganformer.importance_comparison(G, cs.load_clip(tiny_clip), data, refiner, vae, None, drafts=2)
    assert again["drafts"] == 2 and "spearman_learned" not in again
    assert torch.isfinite(torch.tensor(again["spearman_attention_owned_all_layers"]))
    # --finish: the end-of-run figures for the mid-run snapshot, written into its own log, which keeps its history
    train_zoo_ganformer.finish_main(["--finish", str(snap), "--clip", str(tiny_clip), "--data", str(data), "--dit",
                                     str(refiner), "--vae", str(vae), "--importance-drafts", "2"])
    snap_log = json.loads(snap.with_suffix(".json").read_text())
    assert snap_log["steps_done"] == 2 and snap_log["final_psi07"]["psi"] == 0.7 and snap_log["evals"][0]["step"] == 2
    assert snap_log["importance"]["drafts"] == 2 and snap_log["final"]["samples"] == "ganformer.latest-samples.png"
    assert all((out.parent / snap_log[k] if k == "attention_sheet" else out.parent / snap_log[k]["samples"]).is_file()
               for k in ("attention_sheet", "final"))
    capsys.readouterr()
    train_zoo_ganformer.main([*small, "--steps", "4"])  # continues from <out>.train.pt
    assert "resumed at step 3" in capsys.readouterr().out
    assert json.loads(out.with_suffix(".json").read_text())["steps_done"] == 4
