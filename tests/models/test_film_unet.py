"""The FiLM UNet (models/film_unet.py): shapes at any latent size, FiLM reaching every block, the null style,
strict files, and its schedule being Stable Diffusion 1's."""
import pytest
import torch

from diffugan.models import checkpoints as ck
from diffugan.models import film_unet as fu
from devkit.random_weights import perturb

TINY = fu.FiLMUNetConfig(base_channels=16, channel_mults=(1, 2), num_res_blocks=1, attention_levels=(1,),
                         num_heads=2, style_dim=8, groups=8)


def make(config=TINY, seed=0):
    torch.manual_seed(seed)
    return perturb(fu.FiLMUNet(config).eval(), 0.05)


def test_a_fresh_network_predicts_zero_and_keeps_any_latent_size():
    fresh = fu.FiLMUNet(TINY).eval()
    x = torch.randn(2, 4, 12, 12)
    assert torch.equal(fresh(x, torch.tensor([5.0, 900.0])), torch.zeros_like(x))  # zero-initialised outputs
    m = make()
    for h, w in [(8, 8), (9, 13), (1, 1), (3, 30)]:
        out = m(torch.randn(2, 4, h, w), torch.tensor([10.0, 500.0]), torch.randn(2, 8))
        assert out.shape == (2, 4, h, w) and torch.isfinite(out).all()


def test_style_reaches_the_output_and_a_zero_row_is_the_null_style():
    m = make()
    x, t = torch.randn(3, 4, 8, 8), torch.full((3,), 300.0)
    style = torch.randn(3, 8)
    style[1] = 0
    out = m(x, t, style)
    assert not torch.allclose(out[0], m(x, t, None)[0])  # a style changes the prediction
    torch.testing.assert_close(out[1], m(x, t, None)[1])  # a zero row is "no style"
    with pytest.raises(ValueError, match=r"style must be \(3, 8\)"):
        m(x, t, torch.randn(3, 5))


def test_film_modulates_every_residual_block():
    """FiLM: each block's (scale, shift) is a linear map of cond = time + style; turning one block's map off changes
    the output, so the condition enters there (not only at the input)."""
    m = make()
    blocks = [b for b in m.modules() if isinstance(b, fu.ResBlock)]
    assert len(blocks) == 2 * 1 + 2 * 2 + 2  # encoder, decoder (one more per level), middle
    x, t, s = torch.randn(1, 4, 8, 8), torch.tensor([200.0]), torch.randn(1, 8)
    base = m(x, t, s)
    for block in blocks:
        saved = block.film.weight.detach().clone()
        with torch.no_grad():
            block.film.weight.zero_()
        assert not torch.allclose(m(x, t, s), base), "a block whose modulation does not matter"
        with torch.no_grad():
            block.film.weight.copy_(saved)


def test_schedule_is_stable_diffusion_1s():
    ab = fu.sd1_alphas_cumprod()
    assert ab.shape == (1000,)
    torch.testing.assert_close(ab[0], torch.tensor(1 - 0.00085), rtol=1e-6, atol=1e-7)
    assert (ab[1:] < ab[:-1]).all() and 0.004 < float(ab[-1]) < 0.005  # ComfyUI's own table: tests/nodes


def test_files_round_trip_strictly(tmp_path):
    m = make()
    m.style_clip = "DiffuGAN-CLIP-Emoji #abc"
    fu.save_film_unet(m, tmp_path / "u.safetensors")
    again = fu.load_film_unet(tmp_path / "u.safetensors")
    assert again.config == TINY and again.style_clip == m.style_clip
    x, t, s = torch.randn(1, 4, 8, 8), torch.tensor([42.0]), torch.randn(1, 8)
    torch.testing.assert_close(again(x, t, s), m(x, t, s))
    sd = m.state_dict()
    sd["conv_in.weight"] = sd["conv_in.weight"][:, :3]
    ck.save_safetensors(tmp_path / "bad.safetensors", sd, {"format": fu.SAFETENSORS_FORMAT,
                                                           "config": __import__("dataclasses").asdict(TINY)})
    with pytest.raises(ck.CheckpointError, match=r"bad.safetensors: weights do not fit .*conv_in.weight: expected "
                                                  r"\(16, 4, 3, 3\), found \(16, 3, 3, 3\)"):
        fu.load_film_unet(tmp_path / "bad.safetensors")
    with pytest.raises(ck.CheckpointError, match="u.pt: a FiLM UNet is a .safetensors file"):
        fu.load_film_unet(tmp_path / "u.pt")
