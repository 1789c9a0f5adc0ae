"""Shipped UI workflows loaded in the real ComfyUI frontend, in headless Chromium."""
import json

import pytest

from devkit.harness import ARTIFACTS, ROOT, open_frontend

UI_WORKFLOWS = sorted((ROOT / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def browser(server, tmp_path_factory):
    driver = open_frontend(server, tmp_path_factory.mktemp("chromium_profile"))
    yield driver
    driver.quit()


def test_frontend_knows_pack_nodes(browser):
    registered = browser.execute_script(
        "return Object.keys(LiteGraph.registered_node_types).filter(k => k.startsWith('DiffuGAN'))"
    )
    assert "DiffuGANImportancePreview" in registered


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=[p.stem for p in UI_WORKFLOWS])
def test_shipped_workflow_loads_with_all_nodes(browser, path):
    workflow = json.loads(path.read_text())
    result = browser.execute_async_script(
        """
        const [wf, done] = arguments;
        window.app.loadGraphData(wf).then(() => {
          const nodes = window.app.graph.nodes ?? window.app.graph._nodes;
          done({count: nodes.length,
                types: nodes.map(n => n.type),
                unknown: nodes.filter(n => !LiteGraph.registered_node_types[n.type]).map(n => n.type)});
        }).catch(e => done({error: String(e)}));
        """,
        workflow,
    )
    assert "error" not in result, result
    assert result["count"] == len(workflow["nodes"]), result
    assert not result["unknown"], f"node types the frontend does not know: {result['unknown']}"
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"browser_{path.stem}.png"))
