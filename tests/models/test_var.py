"""VAR (models/var.py): parity with FoundationVision/VAR's own code on small random-weight checkpoints in its file
format (devkit/var_parity.py made the reference outputs by running that code), strict loading, and the sampler's
own promises (stop scale, kept scales, top-k / top-p)."""
import copy

import pytest
import torch
from safetensors.torch import load_file

from devkit import var_parity
from diffugan.models import checkpoints as ck
from diffugan.models import var

REF = load_file(str(var_parity.FIXTURE))
PNS = var_parity.PATCH_NUMS


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return var_parity.write_checkpoints(tmp_path_factory.mktemp("var"))


@pytest.fixture(scope="module")
def vqvae(files):
    return var.load_vqvae(files["vqvae"])


def test_tokenizer_matches_the_reference(vqvae):
    x = REF["images"]
    idx = vqvae.encode(x, PNS)
    for k, i in enumerate(idx):
        assert torch.equal(i, REF[f"encode.{k}"]), f"scale {k}: indices differ"
    for k in range(len(PNS)):  # the image after each scale, at full size
        img = vqvae.decode_f_hat(vqvae.f_hat(idx[:k + 1], side=PNS[-1], scales=len(PNS)))
        torch.testing.assert_close(img, REF[f"decode_after.{k}"], atol=2e-5, rtol=1e-4)
        torch.testing.assert_close(img, REF[f"reconstruct_after.{k}"], atol=2e-5, rtol=1e-4)
    assert len({int(i.max()) for i in idx}) > 1  # the fixture's codes are not all one entry


@pytest.mark.parametrize("name", ["l2", "plain"])
def test_transformer_logits_and_samples_match_the_reference(files, vqvae, name):
    model = var.load_var(files[f"var_{name}"])
    kw = var_parity.VAR_KW[name]
    assert (model.config.depth, model.config.embed_dim, model.config.num_heads, model.config.attn_l2_norm) == (
        kw["depth"], kw["embed_dim"], kw["num_heads"], kw["attn_l2_norm"])
    assert model.config.patch_nums == PNS  # read off lvl_1L
    idx = vqvae.encode(REF["images"], PNS)
    inputs = model.next_scale_inputs(vqvae, idx)
    torch.testing.assert_close(inputs, REF["teacher_input"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(model(torch.tensor(var_parity.LABELS), inputs), REF[f"{name}.logits"],
                               atol=2e-5, rtol=1e-4)
    for j, s in enumerate(var_parity.SAMPLES):
        gen = torch.Generator().manual_seed(s["seed"])
        images, tokens = model.sample(vqvae, torch.tensor(var_parity.LABELS), gen, s["cfg"], s["top_k"], s["top_p"])
        assert [t.shape for t in tokens] == [(2, p * p) for p in PNS]
        torch.testing.assert_close(images, REF[f"{name}.sample.{j}"], atol=2e-5, rtol=1e-4)


def test_stop_scale_and_kept_scales(files, vqvae):
    model = var.load_var(files["var_l2"])
    labels = torch.tensor([1, 2])
    full, tokens = model.sample(vqvae, labels, torch.Generator().manual_seed(0), cfg=2.0)
    # stopping after k scales: the same first k scales (same generator), decoded at full size
    for k in (1, 2, 3):
        img, got = model.sample(vqvae, labels, torch.Generator().manual_seed(0), cfg=2.0, stop_scale=k)
        assert img.shape == full.shape and len(got) == k
        assert all(torch.equal(a, b) for a, b in zip(got, tokens))
        expected = vqvae.decode_f_hat(vqvae.f_hat(tokens[:k], side=PNS[-1], scales=len(PNS))).add(1).mul(0.5)
        torch.testing.assert_close(img, expected)
    # keeping an encoded image's coarse scales: those are kept exactly, the rest drawn
    enc = vqvae.encode(var_parity.fixture_images(), PNS)
    _, got = model.sample(vqvae, labels, torch.Generator().manual_seed(3), keep=enc[:2])
    assert torch.equal(got[0], enc[0]) and torch.equal(got[1], enc[1])
    assert not torch.equal(got[3], enc[3])
    img, got = model.sample(vqvae, labels, torch.Generator().manual_seed(3), keep=enc)  # all kept: the image itself
    torch.testing.assert_close(img, vqvae.decode(enc).add(1).mul(0.5))
    calls = []
    model.sample(vqvae, labels, None, stop_scale=3, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_top_k_and_top_p_keep_only_the_likely_tokens():
    logits = torch.log(torch.tensor([[[0.5, 0.3, 0.15, 0.05]]])).expand(1, 500, 4)
    gen = torch.Generator().manual_seed(0)
    assert set(var.draw(logits, gen).flatten().tolist()) == {0, 1, 2, 3}
    assert set(var.draw(logits, gen, top_k=2).flatten().tolist()) == {0, 1}
    assert set(var.draw(logits, gen, top_p=0.7).flatten().tolist()) == {0, 1}  # 0.5 + 0.3 reaches 0.7
    assert set(var.draw(logits, gen, top_p=0.01).flatten().tolist()) == {0}  # the likeliest always stays


def test_files_load_strictly_and_name_what_is_wrong(files, tmp_path):
    sd = torch.load(files["var_l2"], weights_only=True)
    for label, broken, match in [
        ("missing", {k: v for k, v in sd.items() if k != "head.bias"}, "missing keys .*head.bias"),
        ("extra", {**sd, "blocks.0.attn.extra": torch.zeros(3)}, "unexpected keys .*blocks.0.attn.extra"),
        ("shape", {**sd, "head.bias": torch.zeros(5)}, r"head.bias: expected \(64,\), found \(5,\)"),
        ("mask", {**sd, "attn_bias_for_masking": torch.zeros_like(sd["attn_bias_for_masking"])},
         "attn_bias_for_masking is not VAR's for the scales"),
    ]:
        path = tmp_path / f"var_{label}.pth"
        torch.save(broken, path)
        with pytest.raises(ck.CheckpointError, match=f"var_{label}.pth: .*{match}"):
            var.load_var(path)
    # the derived buffers may be left out: they are recomputed
    lean = {k: v for k, v in sd.items() if k not in ("lvl_1L", "attn_bias_for_masking")}
    torch.save(lean, tmp_path / "lean.pth")
    with pytest.raises(ck.CheckpointError, match="lean.pth: .* not VAR's standard"):
        var.load_var(tmp_path / "lean.pth")  # without lvl_1L the scales must be given
    assert var.load_var(tmp_path / "lean.pth", patch_nums=PNS).config == var.load_var(files["var_l2"]).config
    # without the per-head temperature the head count comes from the name (var_d<depth>) or the caller
    plain = torch.load(files["var_plain"], weights_only=True)
    torch.save(plain, tmp_path / "my_var.pth")
    with pytest.raises(ck.CheckpointError, match="my_var.pth: the number of attention heads is not stored"):
        var.load_var(tmp_path / "my_var.pth")
    assert var.load_var(tmp_path / "my_var.pth", num_heads=2).config.num_heads == 2
    with pytest.raises(ck.CheckpointError, match="not a VAR transformer"):
        var.load_var(files["vqvae"])
    with pytest.raises(ck.CheckpointError, match="not a VAR VQVAE"):
        var.load_vqvae(files["var_l2"])


def test_safetensors_round_trip_and_pairing(files, vqvae, tmp_path):
    model = var.load_var(files["var_l2"])
    var.save_var(model, tmp_path / "v.safetensors")
    var.save_vqvae(vqvae, tmp_path / "q.safetensors")
    again, vq2 = var.load_var(tmp_path / "v.safetensors"), var.load_vqvae(tmp_path / "q.safetensors")
    assert again.config == model.config and vq2.config == vqvae.config
    gen = lambda: torch.Generator().manual_seed(1)  # noqa: E731
    torch.testing.assert_close(again.sample(vq2, torch.tensor([4]), gen())[0],
                               model.sample(vqvae, torch.tensor([4]), gen())[0])
    other = var.VQVAE(var.VQVAEConfig(vocab_size=32, z_channels=8, ch=32, scales=4))
    with pytest.raises(ValueError, match="predicts 64 codes of width 8 but the VQVAE has 32"):
        var.check_pair(other, model)
    var.check_pair(vqvae, model)


def test_training_forward_quantises_as_encode_and_reaches_every_part(vqvae):
    vq = copy.deepcopy(vqvae).train().requires_grad_(True)
    x = var_parity.fixture_images()
    recon, loss, idx = vq.forward_train(x, PNS)
    assert all(torch.equal(a, b) for a, b in zip(idx, vqvae.encode(x, PNS)))
    with torch.no_grad():  # the forward value is the tokenizer's reconstruction (straight-through only changes grads)
        torch.testing.assert_close(recon.clamp(-1, 1), vqvae.decode(idx), atol=1e-5, rtol=1e-4)
    (recon.square().mean() + loss).backward()
    for name in ("encoder.conv_in.weight", "decoder.conv_out.weight", "quantize.embedding.weight",
                 "quantize.quant_resi.qresi_ls.0.weight", "quant_conv.weight", "post_quant_conv.weight"):
        grad = dict(vq.named_parameters())[name].grad
        assert grad is not None and float(grad.abs().sum()) > 0, name


def test_a_style_vars_no_style_is_the_zero_style_it_was_trained_with():
    cfg = var.VARConfig(depth=1, embed_dim=32, num_heads=2, num_classes=0, vocab_size=64, z_channels=8,
                        patch_nums=PNS, style_dim=16)
    torch.manual_seed(0)
    model = var.VAR(cfg).eval()
    torch.nn.init.normal_(model.style_proj.weight)
    torch.nn.init.normal_(model.style_proj.bias)  # the projection's bias is part of "no style"
    labels = torch.zeros(2, dtype=torch.long)
    torch.testing.assert_close(model.conditioning(labels), model.conditioning(labels, torch.zeros(2, 16)))
    assert not torch.allclose(model.conditioning(labels), model.class_emb(labels))
    with pytest.raises(ValueError, match=r"the style must be \(2, 16\)"):
        model.conditioning(labels, torch.zeros(2, 8))
