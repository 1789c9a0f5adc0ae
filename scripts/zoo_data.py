"""The demo zoo's data set: real emoji drawn from their vector sources at 256 px, with their names, from npm.

Three drawings of each emoji where the sets have it (Unicode emoji, base glyphs, no skin-tone variants), rendered
from SVG at the zoo's working size (256 px, never upsampled) by resvg (`resvg-py`, a binding of the maintained
Rust renderer), over white:
  - Twemoji, graphics CC BY 4.0 (c) Twitter, Inc and other contributors, from `@twemoji/svg`
  - Noto Emoji, Apache License 2.0 (c) Google, from the sprite of `@svgmoji/noto`
  - OpenMoji, CC BY-SA 4.0 (c) OpenMoji contributors (HfG Schwaebisch Gmuend), from `openmoji`
Names, categories and sub-categories come from `emoji-datasource`'s `emoji.json` (MIT, Cal Henderson); keywords
from OpenMoji's own CLDR annotations (`data/openmoji.json`). Every image gets a caption such as
"grinning face, face-smiling, twemoji style" and its keywords.

The split is by emoji (a hash of its code point sequence), so every drawing of one emoji is on the same side:
about 10 % of the emoji are held out of every training script.

    python scripts/zoo_data.py                       # -> .zoo/data/emoji.safetensors + emoji.json
    python scripts/zoo_data.py --tarballs DIR        # use already-downloaded package tarballs

The tarballs are pinned by version and checked against the registry's sha512 integrity before use. The rendered
set is derived from the OpenMoji drawings among others: it stays under CC BY-SA 4.0 for those images (attribution
above; share-alike), as do models trained on it where that licence reaches them (see zoo/README.md).
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

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".zoo" / "data"
RESOLUTION = 256
HELD_OUT_PERCENT = 10
DATA_NAME = "emoji"  # <data>/emoji.safetensors (uint8 NHWC) + emoji.json (records, resolution, sources)

# package -> (version, sha512 integrity as the npm registry publishes it)
PACKAGES = {
    "emoji-datasource": (
        "16.0.0", "sha512-/qHKqK5Nr3+8zhgO6kHmF43Fm5C8HNn0AaFRIpgw8HF3+uF0Vfc8jgLI1ZQS5ba1vBzksS8NBCjHejwLb2D/Sg=="),
    "@twemoji/svg": (
        "15.0.0", "sha512-ZSPef2B6nBaYnfgdTbAy4jgW95o7pi2xPGwGCU+WMTxo7J6B1lMPTWwSq/wTuiMq+N0khQ90CcvYp1wFoQpo/w=="),
    "@svgmoji/noto": (
        "3.2.0", "sha512-JgtNciB06hMDI1Pb1N2IgLh44XRMZUUNwBANzjY5jXTPqOCu1A1VA35ENvUsRhEUZOm8I+hbdAEHkwMVqxLeIQ=="),
    "openmoji": (
        "17.0.0", "sha512-EBnYrNGdcdw+OSXmENeNE1yBNRu6tOraTmoOyUbJkTmvT/+XETp8RZLSJFzD3lrPc5N9CzsyPnRTk0Vp4UaI9w=="),
}
# drawing style -> (package, licence of its graphics)
DRAWINGS = {
    "twemoji": ("@twemoji/svg", "Twemoji graphics (c) Twitter, Inc and other contributors, CC BY 4.0"),
    "noto": ("@svgmoji/noto", "Noto Emoji (c) Google, Apache License 2.0"),
    "openmoji": ("openmoji", "OpenMoji (c) OpenMoji contributors (HfG Schwaebisch Gmuend), CC BY-SA 4.0"),
}
STYLES = list(DRAWINGS)
CATEGORIES = ["Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
              "Activities", "Objects", "Symbols", "Flags", "Component"]


def zoo_label(record: dict) -> int:
    """The zoo DiT's class label: style x category, 0-9 twemoji, 10-19 noto, 20-29 openmoji (category order as
    CATEGORIES)."""
    return STYLES.index(record["style"]) * len(CATEGORIES) + CATEGORIES.index(record["category"])


NUM_LABELS = len(STYLES) * len(CATEGORIES)


def known_styles(num_classes: int) -> tuple[str, ...]:
    """The drawing styles whose labels a zoo DiT with `num_classes` classes knows (an earlier DiT: the first two)."""
    return tuple(STYLES[: num_classes // len(CATEGORIES)])


def tarball_url(package: str, version: str) -> str:
    return f"https://registry.npmjs.org/{package}/-/{package.split('/')[-1]}-{version}.tgz"


def check_integrity(data: bytes, integrity: str, what: str) -> None:
    algo, _, want = integrity.partition("-")
    got = base64.b64encode(hashlib.new(algo, data).digest()).decode()
    if got != want:
        raise SystemExit(f"{what}: {algo} integrity mismatch (got {got[:16]}..., registry says {want[:16]}...)")


def fetch_tarball(package: str, cache: Path) -> dict[str, bytes]:
    """The package's files (name inside the tarball -> bytes), after the integrity check."""
    version, integrity = PACKAGES[package]
    path = cache / f"{package.replace('/', '__')}-{version}.tgz"
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
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # one sequential pass


def held_out(unified: str) -> bool:
    return int(hashlib.sha256(unified.encode()).hexdigest(), 16) % 100 < HELD_OUT_PERCENT


def caption(entry: dict, style: str) -> str:
    return f"{entry['name'].lower()}, {entry['subcategory']}, {style} style"


def noto_sprite(svg: bytes) -> dict[str, str]:
    """@svgmoji/noto ships one sprite: a root <svg> whose children are one <svg id="1F600"> per emoji. Split it
    into standalone documents (gradient ids are unique across the sprite, so each child stands alone)."""
    import xml.etree.ElementTree as ET

    ns = "http://www.w3.org/2000/svg"
    ET.register_namespace("", ns)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    return {child.get("id").upper(): ET.tostring(child, encoding="unicode")
            for child in ET.fromstring(svg) if child.tag == f"{{{ns}}}svg" and child.get("id")}


def candidates(entry: dict) -> list[str]:
    """Upper-case code point sequences under which a set may file an emoji (with and without FE0F)."""
    out = [entry["unified"].upper()]
    if entry.get("non_qualified"):
        out.append(entry["non_qualified"].upper())
    out.append("-".join(p for p in out[0].split("-") if p != "FE0F"))
    return list(dict.fromkeys(out))


def svg_sources(cache: Path) -> tuple[list[dict], dict[str, dict[str, str]], dict[str, str]]:
    """emoji.json's entries, per style {code points -> SVG text}, and OpenMoji's keywords per code points."""
    meta = fetch_tarball("emoji-datasource", cache)
    entries = json.loads(meta["package/emoji.json"])
    twemoji = {Path(k).stem.upper(): v.decode() for k, v in fetch_tarball("@twemoji/svg", cache).items()
               if k.endswith(".svg")}
    noto = noto_sprite(fetch_tarball("@svgmoji/noto", cache)["package/sprites/all.svg"])
    om_files = fetch_tarball("openmoji", cache)
    openmoji = {Path(k).stem.upper(): v.decode() for k, v in om_files.items()
                if k.startswith("package/color/svg/") and k.endswith(".svg")}
    keywords = {e["hexcode"].upper(): e.get("tags", "") for e in json.loads(om_files["package/data/openmoji.json"])}
    return entries, {"twemoji": twemoji, "noto": noto, "openmoji": openmoji}, keywords


def render(svg: str, size: int = RESOLUTION) -> np.ndarray:
    """An SVG rendered by resvg at size x size over white -> (size, size, 3) uint8."""
    import resvg_py
    from PIL import Image

    png = bytes(resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, background="#ffffff"))
    img = Image.open(io.BytesIO(png)).convert("RGB")
    if img.size != (size, size):  # a non-square drawing keeps its aspect ratio: centre it on white
        canvas = Image.new("RGB", (size, size), (255, 255, 255))
        img.thumbnail((size, size), Image.LANCZOS)
        canvas.paste(img, ((size - img.width) // 2, (size - img.height) // 2))
        img = canvas
    return np.asarray(img)


def build(cache: Path) -> tuple[torch.Tensor, list[dict]]:
    entries, svgs, keywords = svg_sources(cache)
    images, records = [], []
    for e in sorted(entries, key=lambda e: e["sort_order"]):
        if e["category"] not in CATEGORIES:
            continue
        codes = candidates(e)
        kw = next((keywords[c] for c in codes if c in keywords), "")
        for style in STYLES:
            code = next((c for c in codes if c in svgs[style]), None)
            if code is None:
                continue
            images.append(render(svgs[style][code]))
            package = DRAWINGS[style][0]
            records.append({"unified": e["unified"], "name": e["name"].lower(), "style": style,
                            "category": e["category"], "subcategory": e["subcategory"], "keywords": kw,
                            "caption": caption(e, style), "split": "heldout" if held_out(e["unified"]) else "train",
                            "source": f"{package}@{PACKAGES[package][0]}", "licence": DRAWINGS[style][1]})
        if len(records) % 600 < 3:
            print(f"{len(records)} images", flush=True)
    return torch.from_numpy(np.stack(images)), records


def resolution(data_dir: Path = DEFAULT_OUT) -> int:
    """The size the data set at `data_dir` was rendered at (its images are square)."""
    path = Path(data_dir) / f"{DATA_NAME}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python scripts/zoo_data.py` first")
    return int(json.loads(path.read_text())["resolution"])


def records(data_dir: Path = DEFAULT_OUT, split: str | None = None) -> list[dict]:
    """The records of a split (what `load` returns beside the images), without reading the images."""
    path = Path(data_dir) / f"{DATA_NAME}.json"
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python scripts/zoo_data.py` first")
    return [r for r in json.loads(path.read_text())["records"] if split is None or r["split"] == split]


def load(data_dir: Path = DEFAULT_OUT, split: str | None = None, size: int | None = None,
         styles: tuple[str, ...] | None = None) -> tuple[torch.Tensor, list[dict]]:
    """Images as float (N, 3, size, size) in [-1, 1] and their records, optionally one split and some styles only.
    size None: as rendered (256 px); a smaller size is an antialiased downscale (never an upscale)."""
    from safetensors.torch import load_file

    native = resolution(data_dir)
    size = native if size is None else size
    if size > native:
        raise ValueError(f"the zoo data at {data_dir} are rendered at {native} px; {size} px would upsample them")
    images = load_file(str(Path(data_dir) / f"{DATA_NAME}.safetensors"))["images"]
    records = json.loads((Path(data_dir) / f"{DATA_NAME}.json").read_text())["records"]
    keep = [i for i, r in enumerate(records)
            if (split is None or r["split"] == split) and (styles is None or r["style"] in styles)]
    x = images[keep].permute(0, 3, 1, 2).float().div(127.5).sub(1)
    if size != native:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True,
                                            align_corners=False).clamp(-1, 1)
    return x, [records[i] for i in keep]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    ap.add_argument("--tarballs", type=Path, default=None, help="folder of downloaded tarballs (default: <out>/npm)")
    args = ap.parse_args(argv)
    from safetensors.torch import save_file

    images, records = build(args.tarballs or args.out / "npm")
    args.out.mkdir(parents=True, exist_ok=True)
    save_file({"images": images.contiguous()}, str(args.out / f"{DATA_NAME}.safetensors"))
    summary = {s: {sp: sum(r["style"] == s and r["split"] == sp for r in records) for sp in ("train", "heldout")}
               for s in STYLES}
    meta = {"resolution": RESOLUTION, "renderer": "resvg (resvg-py)",
            "sources": {p: {"version": v[0], "url": tarball_url(p, v[0]), "integrity": v[1]}
                        for p, v in PACKAGES.items()},
            "licences": {s: d[1] for s, d in DRAWINGS.items()}, "counts": summary, "records": records}
    (args.out / f"{DATA_NAME}.json").write_text(json.dumps(meta, indent=1))
    print(f"{len(records)} images -> {args.out}: {json.dumps(summary)}")


if __name__ == "__main__":
    sys.exit(main())
