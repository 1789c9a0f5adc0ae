"""Regenerate the shipped example workflows' UI files and thumbnails from their API-format sources.

example_workflows/api/<name>.json (API format) is what the tests queue and what this script starts from; it writes
  example_workflows/<name>.json   the UI format users drag in and the template browser lists: the API workflow
                                  loaded into the real ComfyUI frontend (headless Chromium, the browser tests'
                                  harness), laid out by the frontend and saved as the frontend serializes it;
  example_workflows/<name>.jpg    the template browser's thumbnail, from the workflow's real output: it is queued
                                  on a freshly installed server (nothing but the pack: the zoo models and example
                                  inputs it ships) and the last saved image is shown with the first (the draft or
                                  input) inset in its corner. A workflow that needs models of the user's own
                                  (devkit.user_models.USER_MODELS: a Stable Diffusion 1.5 checkpoint; VAR-d16 and
                                  DiT-XL/2) runs with small random-weight stand-ins in those formats, and its
                                  thumbnail leaves out the stand-ins' output (it shows the draft and the importance
                                  map it is given) or, where every picture would come from a stand-in, says which
                                  published files it needs.

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
from devkit.user_models import USER_MODELS  # noqa: E402

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


def card(text: str, dest: Path) -> None:
    """A thumbnail that says what the workflow needs, for one whose every picture would come from a stand-in."""
    from PIL import Image, ImageDraw, ImageFont

    img = Image.new("RGB", (THUMB_PX, THUMB_PX), (32, 36, 44))
    font = ImageFont.load_default(size=17)
    ImageDraw.Draw(img).multiline_text((18, 22), text, fill=(230, 232, 236), font=font, spacing=7)
    img.save(dest, quality=90)


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
                user = USER_MODELS.get(api_path.stem)
                if user:
                    user.write_stand_ins(server.base / "models")
                run = server.run_prompt(api)
                if not run.ok:
                    raise SystemExit(f"{api_path.name} failed on a fresh install: {run.error()}")
                saved = [files[0] for files in run.saved_outputs().values()]  # each Save node's first image
                if user and user.card:
                    card(user.card, dest.with_suffix(".jpg"))
                else:
                    thumbnail(saved[:-1] if user else saved, dest.with_suffix(".jpg"))
                print(f"wrote {dest.relative_to(ROOT)} ({len(wf['nodes'])} nodes, {len(wf['links'])} links) "
                      f"and its thumbnail")
        finally:
            driver.quit()
            server.stop()


if __name__ == "__main__":
    main()
