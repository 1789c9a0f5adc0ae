"""The shipped demo zoo: every file is in the manifest with its size and sha256, loads strictly with our loaders,
and does its job on a drawn emoji-like picture (a smiley: yellow disc, eyes, mouth, on white)."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import torch

from diffugan.models import dit, taesd
from devkit.drawn import smiley

ZOO = Path(__file__).resolve().parents[2] / "zoo"
MANIFEST = json.loads((ZOO / "manifest.json").read_text())["files"]
# the models the shipped workflows use (the 256 px wing, still training, is checked on its own below)
BY_FOLDER = {f["folder"]: ZOO / f["path"] for f in MANIFEST if "-256" not in f["path"]}


def test_manifest_matches_the_files():
    on_disk = sorted(p.relative_to(ZOO).as_posix() for p in [*ZOO.glob("*/*.safetensors"), *ZOO.glob("*/*.pkl")])
    assert sorted(f["path"] for f in MANIFEST) == on_disk
    for f in MANIFEST:
        data = (ZOO / f["path"]).read_bytes()
        assert len(data) == f["bytes"], f["path"]
        assert hashlib.sha256(data).hexdigest() == f["sha256"], f["path"]
        assert len(data) < 20 * 2 ** 20, f"{f['path']}: zoo files stay small"


def test_zoo_vae_256_reconstructs_held_out_emoji_at_256_px():
    """The VAE of the 256-token DiT (fine-tuned on the 256 px renders): a drawn emoji at 256 px comes back sharp."""
    vae256 = taesd.load_vae(ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    x = smiley(256)
    with torch.no_grad():
        z = vae256.encode(x)
        y = vae256.decode(z).clamp(-1, 1)
    assert z.shape[-2:] == (32, 32)
    psnr = 10 * torch.log10(4 / (y - x).square().mean())
    assert psnr > 24, float(psnr)


@pytest.fixture(scope="module")
def vae():
    return taesd.load_vae(BY_FOLDER["vae"])


def test_zoo_vae_reconstructs_a_drawn_emoji(vae):
    x = smiley()
    with torch.no_grad():
        z = vae.encode(x)
        y = vae.decode(z).clamp(-1, 1)
    assert z.shape == (1, 4, 16, 16)
    psnr = 10 * math.log10(4 / float((y - x).square().mean()))
    assert psnr > 20, f"reconstruction PSNR {psnr:.1f} dB"
    sd1 = z * taesd.SD1_SCALE  # calibrated: SD1-scaled latents are roughly unit-scale
    assert 0.2 < float(sd1.std()) < 3


@torch.no_grad()
def _denoise_errors(model, vae, image, ts=(200, 500)) -> list[float]:
    """The DiT's ε-MSE on `image` (label 0) noised to each t, fixed noise (predicting zero scores 1.0)."""
    z0 = vae.encode(image) * taesd.SD1_SCALE
    acp = torch.cumprod(1 - dit.linear_betas(), 0).float()
    gen = torch.Generator().manual_seed(0)
    errs = []
    for t in ts:
        noise = torch.randn(z0.shape, generator=gen)
        xt = acp[t].sqrt() * z0 + (1 - acp[t]).sqrt() * noise
        errs.append(float((model(xt, torch.tensor([t]), torch.tensor([0])) - noise).square().mean()))
    return errs


def test_zoo_dit_loads_strictly_and_denoises_better_than_chance(vae):
    model = dit.load_dit(BY_FOLDER["dit"])
    assert model.config.input_size == 16 and model.config.num_classes == 20
    errs = _denoise_errors(model, vae, smiley())
    assert max(errs) < 0.6, f"ε-MSE {errs} (predicting zero scores 1.0)"


def test_zoo_dit_256_snapshot_loads_strictly_and_denoises_better_than_chance():
    """The 256-token DiT in training (shipped as snapshots, so a fresh machine resumes from it): 32 x 32 latents of
    the 256 px VAE, patch 2, three drawing styles."""
    model = dit.load_dit(ZOO / "dit" / "diffugan-emoji-dit-256.safetensors")
    assert model.config.input_size == 32 and model.config.patch_size == 2 and model.config.num_classes == 30
    vae256 = taesd.load_vae(ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    errs = _denoise_errors(model, vae256, smiley(256))
    assert max(errs) < 0.6, f"ε-MSE {errs} (predicting zero scores 1.0)"


def test_zoo_film_unet_loads_strictly_and_denoises_with_and_without_a_style():
    """The FiLM UNet the UNet workflows use: SD1's schedule on the 256 px VAE's latents, styled by the zoo CLIP."""
    from diffugan.models import clip_style as cs
    from diffugan.models import film_unet as fu

    unet = fu.load_film_unet(ZOO / "film_unet" / "diffugan-emoji-unet.safetensors")
    clip = cs.load_clip(BY_FOLDER["clip_style"])
    assert unet.style_clip == clip.identity and unet.config.style_dim == clip.embed_dim
    vae256 = taesd.load_vae(ZOO / "vae" / "diffugan-emoji-vae-256.safetensors")
    with torch.no_grad():
        z0 = vae256.encode(smiley(256)) * taesd.SD1_SCALE
        style = clip.encode_texts(["grinning face"]).float()
        ab = fu.sd1_alphas_cumprod()
        gen = torch.Generator().manual_seed(0)
        for t in (200, 500):
            noise = torch.randn(z0.shape, generator=gen)
            xt = ab[t].sqrt() * z0 + (1 - ab[t]).sqrt() * noise
            for s in (None, style):
                err = float((unet(xt, torch.tensor([float(t)]), s) - noise).square().mean())
                assert err < 0.6, f"t={t}, style {s is not None}: ε-MSE {err:.3f} (predicting zero scores 1.0)"


def test_zoo_scorer_loads_strictly_and_scores_the_face_above_the_background():
    from diffugan.models import importance

    scorer = importance.load_scorer(BY_FOLDER["diffugan_importance"])
    assert importance.scorer_params(scorer) <= 1_000_000
    x = smiley() * 0.5 + 0.5
    m = scorer.score(x)[0, 0]
    assert m.shape == (128, 128)
    assert float(m[40:90, 40:90].mean()) > float(m[:16, :16].mean()) + 0.1


def test_zoo_clip_loads_with_its_locked_tower_and_knows_a_face_from_objects():
    """The shipped CLIP leaves the text tower out (the loader reads the sha256-checked copy); a drawn smiley, a
    picture it never saw, sits closer to face prompts than to objects and flags."""
    from diffugan.models import checkpoints as ck
    from diffugan.models import clip_style as cs

    path = BY_FOLDER["clip_style"]
    tensors, meta = ck.load_safetensors(path)
    assert not any(k.startswith(cs.TEXT_TOWER_PREFIX) for k in tensors)
    assert json.loads(meta["text_tower"])["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    clip = cs.load_clip(path)
    images = torch.cat([smiley(64, "smile"), smiley(64, "open")]) * 0.5 + 0.5
    faces = ["grinning face", "slightly smiling face"]
    things = ["flag of japan", "pizza", "red heart", "rocket"]
    with torch.no_grad():
        sim = clip.encode_images(images) @ clip.encode_texts(faces + things).T
    assert float(sim[:, :2].min()) > float(sim[:, 2:].max()) + 0.05, sim


def test_zoo_ganformer_snapshot_loads_follows_the_prompt_and_splits_drafts_among_its_components():
    """The shipped GANformer, a snapshot in dorarad/gansformer's layout read safely (its EMA): it records its CLIP,
    its 64 px drafts change with the prompt, and its attention gives every pixel to its k-1 local components."""
    from diffugan.models import clip_style as cs
    from diffugan.models import ganformer as gf

    G = gf.load_ganformer(ZOO / "ganformer" / "diffugan-emoji-ganformer.pkl")
    clip = cs.load_clip(BY_FOLDER["clip_style"])
    assert G.style_clip == clip.identity and G.img_resolution == 64 and G.c_dim == clip.embed_dim
    with torch.no_grad():
        c = clip.encode_texts(["red heart", "grinning face", "green apple"])
        z = torch.randn(1, G.k, G.z_dim, generator=torch.Generator().manual_seed(0)).expand(3, -1, -1)
        img, att = G.synthesis(G.mapping(z, c, G.pos), G.pos, noise_mode="const", return_attention=True)
    assert img.shape == (3, 3, 64, 64) and torch.isfinite(img).all()
    assert float((img[0] - img[1]).abs().mean()) > 0.05  # the same z, another prompt: another draft
    masks = gf.attention_masks(att)  # (N, k-1, H, W): each pixel's distribution over the local components
    assert masks.shape == (3, G.k - 1, 64, 64)
    torch.testing.assert_close(masks.sum(1), torch.ones(3, 64, 64), atol=1e-4, rtol=0)


def test_zoo_var_tokenizer_reconstructs_a_drawn_emoji_coarse_to_fine():
    """The zoo VAR's tokenizer: a drawn smiley at its 128 px goes to one index map per scale and back; the finer
    scales bring the picture closer one by one (the coarse-to-fine property a VAR draft stopped early relies on), and
    all scales give it back recognisably."""
    from diffugan.models import var as vm

    vq = vm.load_vqvae(ZOO / "var" / "diffugan-emoji-var-vqvae.safetensors")
    pns = (1, 2, 3, 4, 5, 6, 8, 10, 13, 16)
    assert vq.config.scales == len(pns) and vq.config.downsample * pns[-1] == 128
    x = smiley(128)
    with torch.no_grad():
        idx = vq.encode(x, pns)
        assert [i.shape for i in idx] == [(1, p * p) for p in pns]
        psnr = [float(10 * torch.log10(4 / (vq.decode_f_hat(vq.f_hat(idx[:k], side=pns[-1], scales=len(pns)))
                                           .clamp(-1, 1) - x).square().mean())) for k in (1, 3, 5, 7, 10)]
    # the finer half of the scales adds detail step by step (at the 1-3 coarsest ones a single picture may move
    # either way: 14.2, 13.9 dB here; the held-out mean rises, see the card)
    assert psnr[2] < psnr[3] < psnr[4] and psnr[4] > max(psnr[:2]) + 5, psnr
    assert psnr[-1] > 20, psnr


def test_zoo_var_draws_the_prompt_scale_by_scale():
    """The shipped VAR pair (tokenizer + style-conditioned transformer, found by the VAR Loader in zoo/var): it
    records the CLIP it was trained on; its drafts follow the prompt (the zoo CLIP puts each prompt's drafts nearer its
    own text than the others'); and a draw stopped at scale k is the full draw's first k scales, decoded
    at full size (what VAR Draft's stop_scale gives a refiner)."""
    from diffugan.models import clip_style as cs
    from diffugan.models import var as vm

    vq = vm.load_vqvae(ZOO / "var" / "diffugan-emoji-var-vqvae.safetensors")
    tr = vm.load_var(ZOO / "var" / "diffugan-emoji-var.safetensors")
    vm.check_pair(vq, tr)
    clip = cs.load_clip(BY_FOLDER["clip_style"])
    assert tr.style_clip == clip.identity and tr.config.num_classes == 0
    prompts = ["red heart", "grinning face", "blue circle"]
    per = 3
    with torch.no_grad():
        text = clip.encode_texts(prompts).float()
        labels = torch.zeros(len(prompts) * per, dtype=torch.long)
        images, idx = tr.sample(vq, labels, torch.Generator().manual_seed(0), 3.0, 0, 0.9,
                                text.repeat_interleave(per, 0))
        sim = (clip.encode_images(images) @ text.T).view(len(prompts), per, -1).mean(1)  # (prompt, text)
        stopped, got = tr.sample(vq, labels, torch.Generator().manual_seed(0), 3.0, 0, 0.9,
                                 text.repeat_interleave(per, 0), stop_scale=5)
    assert images.shape == (len(prompts) * per, 3, 128, 128) and torch.isfinite(images).all()
    assert torch.equal(sim.argmax(1), torch.arange(len(prompts))), sim  # each prompt's drafts are nearest their own
    assert len(got) == 5 and all(torch.equal(a, b) for a, b in zip(got, idx[:5]))
    pns = tr.config.patch_nums
    expect = vq.decode_f_hat(vq.f_hat(got, side=pns[-1], scales=len(pns))).float().add(1).div(2).clamp(0, 1)
    torch.testing.assert_close(stopped.float().clamp(0, 1), expect, atol=2e-3, rtol=0)
