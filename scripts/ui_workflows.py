"""Regenerate the shipped example workflows' UI files and thumbnails from their API-format sources.

example_workflows/api/<name>.json (API format) is what the tests queue and what this script starts from; it writes
  example_workflows/<name>.json   the UI format users drag in and the template browser lists: the API workflow
                                  loaded into the real ComfyUI frontend (headless Chromium, the browser tests'
                                  harness), laid out by the frontend and saved as the frontend serializes it;
  example_workflows/<name>.jpg    the template browser's thumbnail, from the workflow's real output: it is queued
                                  on a freshly installed server (nothing but the pack: the zoo models and example
                                  inputs it ships) and the last saved image is shown with the first (the draft or
                                  input) inset in its corner. A workflow that needs a model of the user's own
                                  (devkit.sd1_files.USER_MODELS: a Stable Diffusion 1.5 checkpoint) runs with a
                                  small random-weight stand-in in that format, and its thumbnail leaves out the
                                  stand-in's output (it shows the draft and the importance map it is given).

    .venv/bin/python scripts/ui_workflows.py                     # needs scripts/setup_env.sh to have run
    .venv/bin/python scripts/ui_workflows.py text_to_image_hybrid  # only the named workflows
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.harness import ComfyServer, open_frontend  # noqa: E402
from devkit.sd1_files import USER_MODELS, write_tiny_sd1_checkpoint  # noqa: E402

EXAMPLES = ROOT / "example_workflows"
THUMB_PX, INSET_PX = 320, 120

CONVERT_JS = """
const [api, name, done] = arguments;
Promise.resolve(window.app.loadApiJson(api, name)).then(() => {
  const g = window.app.graph;
  g.arrange?.(120);
  done(JSON.stringify(g.serialize()));
}).catch(e => done("ERROR " + e));
"""


def thumbnail(saved: list[Path], dest: Path) -> None:
    """The last saved image, square, with the first one (the draft or input) inset at the bottom left."""
    from PIL import Image, ImageOps

    main = ImageOps.fit(Image.open(saved[-1]).convert("RGB"), (THUMB_PX, THUMB_PX), Image.BICUBIC)
    if len(saved) > 1:
        inset = ImageOps.expand(ImageOps.fit(Image.open(saved[0]).convert("RGB"), (INSET_PX, INSET_PX),
                                             Image.BICUBIC), border=3, fill="white")
        main.paste(inset, (6, THUMB_PX - inset.height - 6))
    main.save(dest, quality=90)


def main() -> None:
    names = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp) / "base")  # a fresh install: the pack and nothing else
        driver = open_frontend(server, Path(tmp) / "profile")
        try:
            for api_path in sorted((EXAMPLES / "api").glob("*.json")):
                if names and api_path.stem not in names:
                    continue
                api = json.loads(api_path.read_text())
                out = driver.execute_async_script(CONVERT_JS, api, api_path.name)
                if out.startswith("ERROR"):
                    raise SystemExit(f"{api_path.name}: {out}")
                wf = json.loads(out)
                assert len(wf["nodes"]) == len(api), (api_path.name, len(wf["nodes"]), len(api))
                dest = EXAMPLES / api_path.name
                dest.write_text(json.dumps(wf, indent=2) + "\n")
                stand_in = USER_MODELS.get(api_path.stem)
                if stand_in:
                    write_tiny_sd1_checkpoint(server.base / "models" / stand_in[0] / stand_in[1])
                run = server.run_prompt(api)
                if not run.ok:
                    raise SystemExit(f"{api_path.name} failed on a fresh install: {run.error()}")
                saved = [files[0] for files in run.saved_outputs().values()]  # each Save node's first image
                thumbnail(saved[:-1] if stand_in else saved, dest.with_suffix(".jpg"))
                print(f"wrote {dest.relative_to(ROOT)} ({len(wf['nodes'])} nodes, {len(wf['links'])} links) "
                      f"and its thumbnail")
        finally:
            driver.quit()
            server.stop()


if __name__ == "__main__":
    main()
