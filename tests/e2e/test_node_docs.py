"""Node documentation in the UI: every DiffuGAN node has a description, every input a tooltip, and a help page in
js/docs/<node id>.md (what the frontend's node-help panel fetches from /extensions/DiffuGAN/docs/) that matches
what the server says about the node today (scripts/node_docs.py writes them)."""
import pytest

from devkit import node_docs


@pytest.fixture(scope="module")
def nodes(server):
    found = node_docs.pack_nodes(server.get("/object_info"))
    assert len(found) >= 20, sorted(found)
    return found


def test_every_node_has_a_description_and_every_input_a_tooltip(nodes):
    missing = [f"{node_id}.{name}" for node_id, info in nodes.items()
               for section in ("required", "optional") for name, spec in info["input"].get(section, {}).items()
               if not (len(spec) > 1 and spec[1].get("tooltip"))]
    assert not missing, f"inputs without a tooltip: {missing}"
    assert all(len(info.get("description", "")) > 40 for info in nodes.values())


def test_help_pages_are_served_where_the_help_panel_looks_and_are_current(server, nodes):
    import requests

    stale = []
    for node_id, info in nodes.items():
        r = requests.get(f"{server.url}/extensions/DiffuGAN/docs/{node_id}.md", timeout=30)
        assert r.status_code == 200, (node_id, r.status_code)
        # served as application/octet-stream: decode as the frontend's fetch().text() does (UTF-8), not by guessing
        if r.content.decode("utf-8") != node_docs.render(node_id, info):
            stale.append(node_id)
    assert not stale, f"help pages out of date (run scripts/node_docs.py): {stale}"
    assert {p.stem for p in node_docs.DOCS.glob("*.md")} == set(nodes)
