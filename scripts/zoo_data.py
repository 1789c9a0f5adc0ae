"""The demo zoo's data set: real emoji images with their names, from the npm registry.

Two image sets of the same 1,911 emoji (Unicode 16.0, base glyphs, no skin-tone variants), 64x64 px each:
  - Twemoji (Twitter), graphics CC BY 4.0, from `emoji-datasource-twitter`
  - Noto Emoji (Google), Apache License 2.0, from `emoji-datasource-google`
Names, categories and sub-categories come from the packages' `emoji.json` (MIT, Cal Henderson). Every image
gets a caption such as "grinning face, face-smiling, twemoji style". Transparent pixels are composited over white.

The split is by emoji (a hash of its code point sequence), so both drawings of one emoji are on the same side:
about 10 % of the emoji are held out of every training script.

    python scripts/zoo_data.py                       # -> .zoo/data/emoji64.safetensors + emoji64.json
    python scripts/zoo_data.py --tarballs DIR        # use already-downloaded package tarballs

The tarballs are pinned by version and checked against the registry's sha512 integrity before use.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".zoo" / "data"
RESOLUTION = 64
HELD_OUT_PERCENT = 10

# package -> (version, sha512 integrity as the npm registry publishes it, image folder, style word, licence)
PACKAGES = {
    "emoji-datasource-twitter": (
        "16.0.0",
        "sha512-7F+uCuHH+7Qnrc15P5tnbvKkg9E6tlzi4MnT2uW1RlN4pLYTza6cP/dstIfSDMtpjFLWuZewWg8jBbuL2eyELQ==",
        "img/twitter/64", "twemoji", "Twemoji graphics (c) Twitter, Inc and other contributors, CC BY 4.0"),
    "emoji-datasource-google": (
        "16.0.0",
        "sha512-ZRexfzs7MVoLnmzZmNsO4TKhnAJp5D++Vm6PpUpH/jEQQlemp3l88CjZ+DoZ2faM9R4QxZkOPJCoT8DlPhfQ3A==",
        "img/google/64", "noto", "Noto Emoji (c) Google, Apache License 2.0"),
}
STYLES = [spec[3] for spec in PACKAGES.values()]
CATEGORIES = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
              "Activities", "Objects", "Symbols", "Flags", "Component"]


def zoo_label(record: dict) -> int:
    """The zoo DiT's class label: style x category, 0-9 twemoji, 10-19 noto (category order as CATEGORIES)."""
    return STYLES.index(record["style"]) * len(CATEGORIES) + CATEGORIES.index(record["category"])


NUM_LABELS = len(STYLES) * len(CATEGORIES)


def tarball_url(package: str, version: str) -> str:
    return f"https://registry.npmjs.org/{package}/-/{package}-{version}.tgz"


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise SystemExit(f"{what}: {algo} integrity mismatch (got {got[:16]}..., registry says {want[:16]}...)")


def fetch_tarball(package: str, cache: Path) -> bytes:
    version, integrity, *_ = PACKAGES[package]
    path = cache / f"{package}-{version}.tgz"
    if not path.exists():
        url = tarball_url(package, version)
        print(f"downloading {url}", flush=True)
        with urllib.request.urlopen(url, timeout=300) as r:
            data = r.read()
        check_integrity(data, integrity, url)
        cache.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    data = path.read_bytes()
    check_integrity(data, integrity, str(path))
    return data


def held_out(unified: str) -> bool:
    return int(hashlib.sha256(unified.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def caption(entry: dict, style: str) -> str:
    return f"{entry['name'].lower()}, {entry['subcategory']}, {style} style"


def over_white(png: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(png)).convert("RGBA")
    if img.size != (RESOLUTION, RESOLUTION):
        img = img.resize((RESOLUTION, RESOLUTION), Image.LANCZOS)
    white = Image.new("RGBA", img.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, img).convert("RGB"))


def build(cache: Path) -> tuple[torch.Tensor, list[dict]]:
    images, records = [], []
    for package, (version, _, folder, style, licence) in PACKAGES.items():
        with tarfile.open(fileobj=io.BytesIO(fetch_tarball(package, cache)), mode="r:gz") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # one sequential pass
        entries = json.loads(files["package/emoji.json"])
        for e in sorted(entries, key=lambda e: e["sort_order"]):
            key = f"package/{folder}/{e['image']}"
            if not e.get(f"has_img_{folder.split('/')[1]}") or key not in files:
                continue
            images.append(over_white(files[key]))
            records.append({"unified": e["unified"], "name": e["name"].lower(), "style": style,
                            "category": e["category"], "subcategory": e["subcategory"],
                            "caption": caption(e, style), "split": "heldout" if held_out(e["unified"]) else "train",
                            "source": f"{package}@{version}", "licence": licence})
    return torch.from_numpy(np.stack(images)), records


def load(data_dir: Path = DEFAULT_OUT, split: str | None = None, size: int = RESOLUTION) -> tuple[torch.Tensor, list[dict]]:
    """Images as float (N, 3, size, size) in [-1, 1] (bicubic from the stored 64 px) and their records, optionally
    one split only. The zoo's refiner works at 128 px: the 1/8 latent is then 16x16, 64 DiT tokens at patch 2."""
    from safetensors.torch import load_file

    path = Path(data_dir) / "emoji64.safetensors"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python scripts/zoo_data.py` first")
    images = load_file(str(path))["images"]
    records = json.loads((Path(data_dir) / "emoji64.json").read_text())["records"]
    keep = [i for i, r in enumerate(records) if split is None or r["split"] == split]
    x = images[keep].permute(0, 3, 1, 2).float().div(127.5).sub(1)
    if size != RESOLUTION:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False).clamp(-1, 1)
    return x, [records[i] for i in keep]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tarballs", type=Path, default=None, help="folder of downloaded tarballs (default: <out>/npm)")
    args = ap.parse_args(argv)
    from safetensors.torch import save_file

    images, records = build(args.tarballs or args.out / "npm")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(args.out / "emoji64.safetensors"))
    summary = {s: {sp: sum(r["style"] == s and r["split"] == sp for r in records) for sp in ("train", "heldout")}
               for s in STYLES}
    meta = {"resolution": RESOLUTION, "sources": {p: {"version": v[0], "url": tarball_url(p, v[0]), "integrity": v[1],
                                                     "licence": v[4]} for p, v in PACKAGES.items()},
            "counts": summary, "records": records}
    (args.out / "emoji64.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(records)} images -> {args.out}: {json.dumps(summary)}")


if __name__ == "__main__":
    sys.exit(main())
