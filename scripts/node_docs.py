"""Write the nodes' help pages (js/docs/<node id>.md, shown in ComfyUI's node-help panel) from a freshly started
server's /object_info. Rerun after changing a node's description, inputs or tooltips; a test checks they match.

    .venv/bin/python scripts/node_docs.py
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from devkit import node_docs  # noqa: E402
from devkit.harness import ComfyServer  # noqa: E402


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = ComfyServer(Path(tmp) / "base")
        try:
            nodes = node_docs.pack_nodes(server.get("/object_info"))
        finally:
            server.stop()
    node_docs.DOCS.mkdir(parents=True, exist_ok=True)
    for stale in set(node_docs.DOCS.glob("*.md")) - {node_docs.DOCS / f"{k}.md" for k in nodes}:
        stale.unlink()
    for node_id, info in sorted(nodes.items()):
        (node_docs.DOCS / f"{node_id}.md").write_text(node_docs.render(node_id, info))
    print(f"wrote {len(nodes)} help pages to {node_docs.DOCS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
