"""Regenerate the shipped UI-format workflows (workflows/*.json) from their API-format sources (workflows/api/).

The API format is what tests queue; the UI format is what users drag into ComfyUI. Rather than hand-writing node
positions and link tables, this loads each API workflow into the real ComfyUI frontend (headless Chromium, same
harness as the browser tests), lets the frontend lay it out, and saves what the frontend serializes.

    .venv/bin/python scripts/ui_workflows.py            # needs scripts/setup_env.sh to have run
    .venv/bin/python scripts/ui_workflows.py emoji_coarse_to_fine   # only the named workflows
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit.harness import ComfyServer, open_frontend  # noqa: E402

CONVERT_JS = """
const [api, name, done] = arguments;
Promise.resolve(window.app.loadApiJson(api, name)).then(() => {
  const g = window.app.graph;
  g.arrange?.(120);
  done(JSON.stringify(g.serialize()));
}).catch(e => done("ERROR " + e));
"""


def main() -> None:
    names = set(sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp) / "base")
        driver = open_frontend(server, Path(tmp) / "profile")
        try:
            for api_path in sorted((ROOT / "workflows" / "api").glob("*.json")):
                if names and api_path.stem not in names:
                    continue
                api = json.loads(api_path.read_text())
                out = driver.execute_async_script(CONVERT_JS, api, api_path.name)
                if out.startswith("ERROR"):
                    raise SystemExit(f"{api_path.name}: {out}")
                wf = json.loads(out)
                assert len(wf["nodes"]) == len(api), (api_path.name, len(wf["nodes"]), len(api))
                dest = ROOT / "workflows" / api_path.name
                dest.write_text(json.dumps(wf, indent=2) + "\n")
                print(f"wrote {dest.relative_to(ROOT)} ({len(wf['nodes'])} nodes, {len(wf['links'])} links)")
        finally:
            driver.quit()
            server.stop()


if __name__ == "__main__":
    main()
