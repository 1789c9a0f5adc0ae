"""Shipped UI workflows loaded in the real ComfyUI frontend, in headless Chromium."""
import json
import time

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


# --- the emphasis editor (js/emphasis.js) on the user_emphasis example, with real mouse input ---------------------

def _merge_node_into_view(browser, workflow):
    """Load the workflow, queue it, wait until the Merge node's editor shows the preview, put the node on screen at
    zoom 1; returns the editor canvas element and the picture's rectangle in page pixels."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.execute_async_script(
        "const [wf, done] = arguments; window.app.loadGraphData(wf).then(() => window.app.queuePrompt(0, 1))"
        ".then(() => done(true)).catch(e => done(String(e)));", workflow)
    WebDriverWait(browser, 300).until(lambda d: d.execute_script(
        "const c = document.querySelector('.diffugan-emphasis-canvas'); return !!(c && c.dataset.loaded);"))
    browser.execute_script("""
        const n = window.app.graph.nodes.find(n => n.type === 'DiffuGANImportanceMerge');
        const ds = window.app.canvas.ds; ds.scale = 1; ds.offset = [120 - n.pos[0], 120 - n.pos[1]];
        window.app.canvas.setDirty(true, true);""")
    WebDriverWait(browser, 30).until(lambda d: d.execute_script(
        "const c = document.querySelector('.diffugan-emphasis-canvas'); const b = c.getBoundingClientRect();"
        "return b.width > 100 && b.height > 100 && b.left > 0 && b.top > 0;"))
    canvas = browser.find_element(By.CSS_SELECTOR, ".diffugan-emphasis-canvas")
    rect = browser.execute_script("""
        const c = arguments[0], b = c.getBoundingClientRect();
        const img = new Image(); img.src = c.dataset.loaded;
        const nw = img.naturalWidth || 128, nh = img.naturalHeight || 128, s = Math.min(b.width / nw, b.height / nh);
        return {left: b.left + (b.width - nw * s) / 2, top: b.top + (b.height - nh * s) / 2, s: s,
                cx: b.left + b.width / 2, cy: b.top + b.height / 2, nw: nw};""", canvas)
    return canvas, rect


def _points(browser) -> list[dict]:
    raw = browser.execute_script(
        "return window.app.graph.nodes.find(n => n.type === 'DiffuGANImportanceMerge')"
        ".widgets.find(w => w.name === 'points').value;")
    return json.loads(raw) if raw.strip() else []


def _offset(rect, x, y):
    """Offset from the canvas centre (what Selenium's move_to_element_with_offset takes) of picture pixel (x, y)."""
    return round(rect["left"] + x * rect["s"] - rect["cx"]), round(rect["top"] + y * rect["s"] - rect["cy"])


def test_click_drag_and_brush_set_the_merge_nodes_points_and_change_the_output(browser, server):
    import numpy as np
    from PIL import Image
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    workflow = json.loads((ROOT / "example_workflows" / "user_emphasis.json").read_text())
    canvas, rect = _merge_node_into_view(browser, workflow)
    before = _points(browser)
    assert len(before) == 1  # the workflow's own click on the right cheek

    k = rect["nw"] / 128  # the picture's pixels per pixel of a 128 px smiley (positions below are on that)
    # click on the left cheek and drag 14 px to the right: a point there with radius ~14
    x0, y0 = _offset(rect, 34 * k, 64 * k)
    drag = round(14 * k * rect["s"])
    ActionChains(browser).move_to_element_with_offset(canvas, x0, y0).click_and_hold().move_by_offset(drag, 0) \
        .release().perform()
    points = _points(browser)
    assert len(points) == 2, points
    p = points[1]
    assert abs(p["x"] - 34 * k) < 2 * k and abs(p["y"] - 64 * k) < 2 * k and abs(p["radius"] - 14 * k) < 2.5 * k, p
    assert p["weight"] == 1, p

    # Shift+click: half weight; Ctrl+drag: a brush stroke of several points (undone again by the Undo button)
    x1, y1 = _offset(rect, 96 * k, 64 * k)
    ActionChains(browser).key_down(Keys.SHIFT).move_to_element_with_offset(canvas, x1, y1).click() \
        .key_up(Keys.SHIFT).perform()
    assert _points(browser)[-1]["weight"] == 0.5
    ActionChains(browser).key_down(Keys.CONTROL).move_to_element_with_offset(canvas, *_offset(rect, 20 * k, 110 * k)) \
        .click_and_hold().move_by_offset(round(80 * k * rect["s"]), 0).release().key_up(Keys.CONTROL).perform()
    stroke = [q for q in _points(browser) if q.get("stroke")]
    assert len(stroke) >= 5 and all(abs(q["y"] - 110 * k) < 2 * k for q in stroke), stroke
    for _ in range(2):  # undo the stroke and the Shift+click
        browser.execute_script("[...document.querySelectorAll('.diffugan-emphasis button')]"
                               ".find(b => b.textContent === 'Undo').click();")
    assert _points(browser) == points
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / "browser_emphasis_editor.png"))

    # the queued prompt carries the new point, and the level map changed where the user clicked
    def idle():
        q = server.get("/queue")
        return not q["queue_running"] and not q["queue_pending"]

    def levels_after_queue():
        """Queue the graph from the frontend (as the Queue button does); the new run's points and level map."""
        deadline = time.monotonic() + 300
        while not idle() and time.monotonic() < deadline:
            time.sleep(0.5)
        known = set(server.get("/history"))
        browser.execute_async_script("const done = arguments[0]; window.app.queuePrompt(0, 1).then(() => done(1));")
        while time.monotonic() < deadline:
            new = set(server.get("/history")) - known
            if new and idle():
                break
            time.sleep(0.5)
        [entry] = [server.get("/history")[k] for k in new]
        out = entry["outputs"]["14"]["images"][0]
        return entry["prompt"][2]["6"]["inputs"]["points"], server.base / "output" / out["subfolder"] / out["filename"]

    queued, after_path = levels_after_queue()
    assert json.loads(queued) == points
    plain = json.loads(json.dumps(workflow))
    for node in plain["nodes"]:
        if node["type"] == "DiffuGANImportanceMerge":
            node["widgets_values"] = [v if not (isinstance(v, str) and v.startswith("[")) else json.dumps(before)
                                      for v in node["widgets_values"]]
    browser.execute_async_script("const [wf, done] = arguments; window.app.loadGraphData(wf).then(() => done(1));",
                                 plain)
    _, before_path = levels_after_queue()
    a = np.asarray(Image.open(after_path).convert("RGB"), dtype=np.float32)
    b = np.asarray(Image.open(before_path).convert("RGB"), dtype=np.float32)
    yy, xx = np.mgrid[:a.shape[0], :a.shape[1]]
    clicked = (xx - 34 * k) ** 2 + (yy - 64 * k) ** 2 < (8 * k) ** 2
    assert np.abs(a - b)[clicked].mean() > 20, np.abs(a - b)[clicked].mean()  # the heat colours moved there
