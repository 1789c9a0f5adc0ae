"""The nodes' help pages (js/docs/<node id>.md), written from what the server says about each node (/object_info:
description, inputs with their types, defaults, ranges and tooltips, outputs), plus the example workflows that use
it. ComfyUI's frontend shows /extensions/<pack>/docs/<node id>.md in its node-help panel. scripts/node_docs.py
writes them; a test renders them again from a live server and compares, so they never drift from the nodes."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "js" / "docs"
EXAMPLES = ROOT / "example_workflows" / "api"


FILE_INPUTS = {"ckpt_name", "scorer_name", "controlnet_name", "mapper", "vae_name", "image"}  # lists of files

def _input_line(name: str, spec: list, optional: bool) -> str:
    kind, extra = (spec[0], spec[1] if len(spec) > 1 else {}) if spec else ("?", {})
    options = kind if isinstance(kind, list) else extra.get("options") if kind == "COMBO" else None
    if options is not None:
        kind = "COMBO"
        if name in FILE_INPUTS:
            what = "a file from its folder (the server lists what it finds)"
        else:
            what = "one of " + ", ".join(f"`{o}`" for o in options[:12]) + (" …" if len(options) > 12 else "")
    else:
        bits = [f"default {extra['default']!r}" if "default" in extra and extra["default"] != "" else "",
                f"{extra['min']}…{extra['max']}" if "min" in extra and "max" in extra else ""]
        what = ", ".join(b for b in bits if b)
    tip = extra.get("tooltip", "")
    row = f"| `{name}`{' (optional)' if optional else ''} | {kind} | {_cell(what)} | {_cell(tip)} |"
    return row.replace("\n", " ")


def _cell(text: str) -> str:
    return text.replace("|", "\\|")  # a bar inside a table cell


def render(node_id: str, info: dict) -> str:
    """One node's help page in Markdown."""
    lines = [f"# {info.get('display_name') or node_id}", "", info.get("description", "").strip(), "",
             f"Category: `{info.get('category', '')}` · node id: `{node_id}`", "", "## Inputs", "",
             "| input | type | values | what it does |", "|---|---|---|---|"]
    for section, optional in (("required", False), ("optional", True)):
        spec = info.get("input", {}).get(section, {})
        for name in info.get("input_order", {}).get(section, list(spec)):
            lines.append(_input_line(name, spec[name], optional))
    lines += ["", "## Outputs", "", "| output | type |", "|---|---|"]
    for name, kind in zip(info.get("output_name", []), info.get("output", [])):
        lines.append(f"| `{name}` | {kind} |")
    used = sorted(p.stem for p in EXAMPLES.glob("*.json")
                  if any(n["class_type"] == node_id for n in json.loads(p.read_text()).values()))
    if used:
        lines += ["", "## In the example workflows", "",
                  "Workflow → Browse Templates, under this pack's folder name: " + ", ".join(f"`{u}`" for u in used)
                  + "."]
    return "\n".join(lines) + "\n"


def pack_nodes(object_info: dict) -> dict[str, dict]:
    return {k: v for k, v in object_info.items() if v.get("python_module", "").endswith("DiffuGAN")}
