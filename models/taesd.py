"""A small autoencoder in the TAESD layout, the VAE of the demo zoo.

ComfyUI's stock VAELoader recognises this layout by its `taesd_encoder.*` / `taesd_decoder.*` keys and treats it as
an SD1-latent VAE: 4 latent channels at 1/8 of the image size. So a refiner trained on these latents is a stock
`MODEL` on stock `LATENT`s, and VAEEncode / VAEDecode work unchanged. Written here (pure PyTorch) so the zoo's
training scripts can train it; only the parameter layout follows TAESD (Ollin Boer Bohan, MIT).

The image convention is ComfyUI's: `encode` takes pixels in [-1, 1] and `decode` returns pixels in [-1, 1]; the raw
encoder works on [0, 1]. `vae_scale` / `vae_shift` map raw latents to the SD1 range (std ≈ 1 / 0.18215, mean ≈ 0)
that the SD1 latent format then scales by 0.18215 for the model.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import checkpoints as ck

LATENT_CHANNELS = 4
WIDTH = 64
SD1_SCALE = 0.18215
SAFETENSORS_FORMAT = "diffugan.taesd.v1"


def _conv(n_in: int, n_out: int, **kw) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kw)


class _Clamp(nn.Module):
    def forward(self, x):
        return torch.tanh(x / 3) * 3


class _Block(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Sequential(_conv(c, c), nn.ReLU(), _conv(c, c), nn.ReLU(), _conv(c, c))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()

    def forward(self, x):
        return self.fuse(self.conv(x) + self.skip(x))


def _encoder(c: int = WIDTH, z: int = LATENT_CHANNELS) -> nn.Sequential:
    layers: list[nn.Module] = [_conv(3, c), _Block(c)]
    for _ in range(3):  # three stride-2 stages: 1/8
        layers += [_conv(c, c, stride=2, bias=False), _Block(c), _Block(c), _Block(c)]
    return nn.Sequential(*layers, _conv(c, z))


def _decoder(c: int = WIDTH, z: int = LATENT_CHANNELS) -> nn.Sequential:
    layers: list[nn.Module] = [_Clamp(), _conv(z, c), nn.ReLU()]
    for _ in range(3):
        layers += [_Block(c), _Block(c), _Block(c), nn.Upsample(scale_factor=2), _conv(c, c, bias=False)]
    return nn.Sequential(*layers, _Block(c), _conv(c, 3))


class TinyAutoencoder(nn.Module):
    downscale = 8

    def __init__(self):
        super().__init__()
        self.taesd_encoder = _encoder()
        self.taesd_decoder = _decoder()
        self.vae_scale = nn.Parameter(torch.tensor(1.0))
        self.vae_shift = nn.Parameter(torch.tensor(0.0))

    def encode_raw(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> raw latents (what the decoder reads after its clamp)."""
        return self.taesd_encoder(x * 0.5 + 0.5)

    def decode_raw(self, r: torch.Tensor) -> torch.Tensor:
        return self.taesd_decoder(r).sub(0.5).mul(2)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> VAE latents as ComfyUI's VAEEncode returns them (before the 0.18215)."""
        return self.encode_raw(x) / self.vae_scale + self.vae_shift

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decode_raw((z - self.vae_shift) * self.vae_scale)

    @torch.no_grad()
    def calibrate(self, raw_latents: torch.Tensor) -> None:
        """Set scale/shift so encoded latents times SD1's 0.18215 have zero mean and unit std over `raw_latents`."""
        mean, std = raw_latents.mean(), raw_latents.std()
        self.vae_scale.fill_(float(std) * SD1_SCALE)
        self.vae_shift.fill_(-float(mean) / float(self.vae_scale))


def save_vae(model: TinyAutoencoder, path, extra: dict | None = None, half: bool = True) -> None:
    from .checkpoints import save_safetensors

    sd = {k: (v.half() if half and v.ndim > 0 else v) for k, v in model.state_dict().items()}
    save_safetensors(path, sd, {"format": SAFETENSORS_FORMAT, **(extra or {})})


@ck.user_file_loader("VAE (TAESD layout)", (".safetensors",))
def load_vae(path) -> TinyAutoencoder:
    """Strict keys and shapes (safetensors only)."""
    from pathlib import Path

    if Path(path).suffix.lower() != ".safetensors":
        raise ck.CheckpointError(f"{Path(path).name}: a zoo VAE is a .safetensors file")
    tensors, _ = ck.load_safetensors(path)
    tensors = {k: v.float() for k, v in tensors.items()}
    model = ck.build_checked(TinyAutoencoder, tensors, Path(path).name)
    return model.eval().requires_grad_(False)
