"""Download the real public checkpoints DiffuGAN loads, into the right ComfyUI model folders, verified.

    python scripts/download_models.py --list
    python scripts/download_models.py dit-xl-2-256 sd-vae-ft-ema --models-dir /path/to/ComfyUI/models
    python scripts/download_models.py stylegan2-ffhq --mirror http://my-mirror.local/checkpoints/

Each file streams to <folder>/<name>.part with a progress bar, is checked against the catalog's size and sha256,
and only then renamed into place; an interrupted download resumes (HTTP Range) on the next run; a file already in
place with the right hash is skipped. A size or hash mismatch deletes the partial file and stops with an error.
--mirror fetches every file as <mirror>/<file name> instead (an internal mirror, or a local server in tests).

Catalog values (URL, size, sha256) are copied from public sources named beside each entry; an entry whose hash has
not been published where we could read it says so (sha256 None) and is downloaded with its size checked only
(the tool prints the sha256 it computed, so you can compare it with a value you trust).
"""
from __future__ import annotations

import argparse
import hashlib
import os
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20


@dataclass(frozen=True)
class Entry:
    name: str  # catalog key
    url: str
    folder: str  # ComfyUI model folder it goes in
    file: str
    size: int | None
    sha256: str | None
    what: str
    source: str = ""  # where size/sha256 were read


SG2 = "https://nvlabs-fi-cdn.nvidia.com/stylegan2-ada-pytorch/pretrained/"
VAR_HF = "https://huggingface.co/FoundationVision/var/resolve/main/"  # the links of FoundationVision/VAR's README
CATALOG: dict[str, Entry] = {e.name: e for e in [
    Entry("stylegan2-ffhq", SG2 + "ffhq.pkl", "stylegan", "ffhq.pkl", 381624121,
          "a205a346e86a9ddaae702e118097d014b7b8bd719491396a162cca438f2f524c", "StyleGAN2-ADA FFHQ 1024²",
          "Git LFS pointer of the same file in huggingface.co/spaces/edemana/my-stylegan-model; download scripts "
          "that pin the NVIDIA URL with this hash"),
    Entry("stylegan2-metfaces", SG2 + "metfaces.pkl", "stylegan", "metfaces.pkl", 381624133,
          "880a460d011a3696c088f58f5844b44271b17903963f2671f96f72dfbce5f76f", "StyleGAN2-ADA MetFaces 1024²",
          "Git LFS pointers in huggingface.co/ZeqiangLai/StyleGAN2-pkl (ada/metfaces.pkl) and "
          "huggingface.co/spaces/adirik/stylemc-demo"),
    Entry("stylegan3-t-ffhq", "https://api.ngc.nvidia.com/v2/models/nvidia/research/stylegan3/versions/1/files/"
          "stylegan3-t-ffhq-1024x1024.pkl", "stylegan", "stylegan3-t-ffhq-1024x1024.pkl", 294775112,
          "efd9fa1f967a11b5390399a8ed512dc32e341c245fa2d4dafa6d94e96222085b", "StyleGAN3-T FFHQ 1024²",
          "public download scripts that pin this NGC URL with this size and hash"),
    Entry("dit-xl-2-256", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-256x256.pt", "dit",
          "DiT-XL-2-256x256.pt", 2700611775, "9ec1876e4c03471bca126663a30e2d1b20610b6d2f87850a39a36f25cc685521",
          "facebookresearch DiT-XL/2, ImageNet 256²", "Git LFS pointers in huggingface.co/mytcl/DiT and "
          "huggingface.co/iasudakov/model_checkpoints; download scripts pinning the fbaipublicfiles URL"),
    Entry("dit-xl-2-512", "https://dl.fbaipublicfiles.com/DiT/models/DiT-XL-2-512x512.pt", "dit",
          "DiT-XL-2-512x512.pt", None, None, "facebookresearch DiT-XL/2, ImageNet 512²",
          "no published size or hash found: the tool prints the sha256 it computes"),
    Entry("clip-vit-b-32", "https://huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K/resolve/main/"
          "open_clip_pytorch_model.bin", "clip_style", "ViT-B-32-laion2b_s34b_b79k.bin", 605219813,
          "1bd3c7172de5b207ceac554f5ab5266166f3b9baccc9af5989bc801016d080ad",
          "open_clip ViT-B/32 LAION-2B (the file name tells the loader its architecture)",
          "the file's Git LFS pointer on huggingface.co/laion/CLIP-ViT-B-32-laion2B-s34B-b79K and the same pointer "
          "in huggingface.co/jinaai/clip-models"),
    Entry("sd-vae-ft-ema", "https://huggingface.co/stabilityai/sd-vae-ft-ema-original/resolve/main/"
          "vae-ft-ema-560000-ema-pruned.safetensors", "vae", "vae-ft-ema-560000-ema-pruned.safetensors", 334641190,
          "95f26a5ab04779d5467d1fcecaf93160ffa523afe399b835b3e1bb77ff2d937a", "SD VAE ft-EMA (DiT's VAE)",
          "sha256 on huggingface.co/stabilityai/sd-vae-ft-ema-original; size from mirrors with the same hash"),
    *[Entry(f"var-d{d}", f"{VAR_HF}var_d{d}.pth", "var", f"var_d{d}.pth", None, None,
            f"FoundationVision VAR-d{d} transformer, ImageNet 256² (pair it with var-vqvae)",
            "no published size or hash found: the tool prints the sha256 it computes") for d in (16, 20, 24, 30)],
    Entry("var-vqvae", f"{VAR_HF}vae_ch160v4096z32.pth", "var", "vae_ch160v4096z32.pth", None, None,
          "FoundationVision VAR multi-scale VQVAE tokenizer (every var-d* needs it)",
          "no published size or hash found: the tool prints the sha256 it computes"),
    Entry("sd-vae-ft-mse", "https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/"
          "vae-ft-mse-840000-ema-pruned.safetensors", "vae", "vae-ft-mse-840000-ema-pruned.safetensors", 334641190,
          "735e4c3a447a3255760d7f86845f09f937809baa529c17370d83e4c3758f3c75", "SD VAE ft-MSE",
          "sha256 on huggingface.co/stabilityai/sd-vae-ft-mse-original; size from mirrors with the same hash"),
]}


class DownloadError(RuntimeError):
    pass


def _progress(done: int, total: int | None, name: str) -> None:
    if total:
        pct = 100 * done / total
        bar = "#" * int(pct / 4)
        sys.stderr.write(f"\r{name}: [{bar:<25}] {pct:5.1f}% {done / 2**20:8.1f}/{total / 2**20:.1f} MiB")
    else:
        sys.stderr.write(f"\r{name}: {done / 2**20:8.1f} MiB")
    sys.stderr.flush()


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _verify(path: Path, entry: Entry) -> str:
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        raise DownloadError(f"{entry.file}: {size} bytes, the catalog says {entry.size}")
    digest = sha256_of(path)
    if entry.sha256 is not None and digest != entry.sha256:
        raise DownloadError(f"{entry.file}: sha256 {digest} does not match the catalog's {entry.sha256}")
    return digest


def download(entry: Entry, models_dir: Path, mirror: str | None = None, progress=_progress,
             timeout: float = 60) -> Path:
    """Fetch one entry into models_dir/<folder>/<file>; returns the path. Raises DownloadError with a reason."""
    dest = Path(models_dir) / entry.folder / entry.file
    if dest.exists():
        try:
            _verify(dest, entry)
            return dest
        except DownloadError as e:
            raise DownloadError(f"{dest} exists but is not the catalog's file ({e}); move it away to re-download") \
                from None
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    url = f"{mirror.rstrip('/')}/{entry.file}" if mirror else entry.url
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "DiffuGAN-downloader"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and entry.size is not None and have == entry.size:  # already complete
            response = None
        else:
            raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        raise DownloadError(f"{url}: cannot connect ({getattr(e, 'reason', e)})") from None
    if response is not None:
        with response:
            resumed = response.status == 206
            mode = "ab" if resumed else "wb"
            done = have if resumed else 0
            length = response.headers.get("Content-Length")
            total = entry.size or (int(length) + done if length else None)
            with open(part, mode) as f:
                while True:
                    block = response.read(CHUNK)
                    if not block:
                        break
                    f.write(block)
                    done += len(block)
                    if progress:
                        progress(done, total, entry.file)
            if progress:
                sys.stderr.write("\n")
    try:
        digest = _verify(part, entry)
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, dest)
    if entry.sha256 is None:
        print(f"{entry.file}: no published sha256 in the catalog; computed {digest}")
    return dest


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", help="catalog names (see --list)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--models-dir", type=Path, default=None, help="ComfyUI's models folder (default: the one "
                    "this pack is installed in, ../../models, else ./models)")
    ap.add_argument("--mirror", default=None, help="fetch <mirror>/<file name> instead of the catalog URL")
    args = ap.parse_args(argv)
    if args.list or not args.names:
        for e in CATALOG.values():
            size = f"{e.size / 2**20:,.0f} MiB" if e.size else "size ?"
            print(f"{e.name:24s} {size:>12s}  -> {e.folder}/{e.file}  ({e.what})"
                  + ("" if e.sha256 else "  [no published sha256]"))
        return 0
    unknown = [n for n in args.names if n not in CATALOG]
    if unknown:
        print(f"unknown: {', '.join(unknown)}; --list shows the catalog", file=sys.stderr)
        return 2
    models_dir = args.models_dir
    if models_dir is None:
        pack = Path(__file__).resolve().parent.parent
        models_dir = pack.parent.parent / "models" if pack.parent.name == "custom_nodes" else Path("models")
    for name in args.names:
        try:
            path = download(CATALOG[name], models_dir, args.mirror)
        except DownloadError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        print(f"{name}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
