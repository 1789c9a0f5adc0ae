"""The shipped example workflows on a freshly installed server: the pack linked into an empty ComfyUI base directory
and nothing else (no file a test or the demo writes). They must be listed by the template browser with their
thumbnails, validate against that server's /object_info (comfy-lint, a third-party linter, --strict), and run.
Two workflows need models of the user's own (devkit.user_models.USER_MODELS: refining with a stock Stable Diffusion
1.5 checkpoint; FoundationVision's VAR-d16 refined by facebookresearch's DiT-XL/2): on the fresh server the linter
must name those files and nothing else; with small random-weight stand-ins in the same formats under those names
they must lint clean and run."""
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from devkit.harness import ROOT, ComfyServer, read_images, save_artifact
from devkit.user_models import USER_MODELS

EXAMPLES = ROOT / "example_workflows"
API = sorted((EXAMPLES / "api").glob("*.json"))
EXAMPLE_INPUTS = ROOT / "example_inputs"
USER_FILE = "diffugan_reference_heart.png"  # a user's own picture of the same name as an example input: kept


def _fresh_install(tmp_path_factory, name: str):
    """A server on an empty base directory with one picture of the user's under an example input's name."""
    base = tmp_path_factory.mktemp(name)
    (base / "input").mkdir()
    Image.new("RGB", (64, 64), (40, 90, 200)).save(base / "input" / USER_FILE)
    srv = ComfyServer(base)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    yield from _fresh_install(tmp_path_factory, "fresh_install")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_every_example_has_ui_file_api_source_and_thumbnail():
    ui = {p.stem for p in EXAMPLES.glob("*.json")}
    assert ui == {p.stem for p in API} and len(ui) >= 7, ui
    for path in API:
        api = json.loads(path.read_text())
        workflow = json.loads((EXAMPLES / path.name).read_text())
        assert sorted(n["type"] for n in workflow["nodes"]) == sorted(n["class_type"] for n in api.values()), path
        # every node says what it does in this graph, and the UI file (regenerated from the API one) says the same
        untitled = [k for k, n in api.items() if not n.get("_meta", {}).get("title")]
        assert not untitled, f"{path.name}: nodes {untitled} have no title"
        # (the frontend leaves out a title that is the node's display name, as "Differential Diffusion")
        stale = [n["id"] for n in workflow["nodes"] if n.get("title", api[str(n["id"])]["_meta"]["title"])
                 != api[str(n["id"])]["_meta"]["title"]]
        assert not stale, f"{path.stem}.json: titles of nodes {stale} are stale: run scripts/ui_workflows.py"
        assert (EXAMPLES / f"{path.stem}.jpg").read_bytes()[:3] == b"\xff\xd8\xff", f"{path.stem}.jpg is no JPEG"


def test_demo_seed_offset_moves_every_seed_of_a_prompted_workflow():
    """`scripts/demo.py --seeds N` runs the shipped graph with every seed input (the draft's and the refiner's)
    raised by 0 .. N-1, and never changes the graph it was given."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    api = json.loads((EXAMPLES / "api" / "text_to_image_hybrid.json").read_text())
    seeded = {k for k, n in api.items() if isinstance(n["inputs"].get("seed"), int)}
    assert {api[k]["class_type"] for k in seeded} == {"DiffuGANStyleGANGenerate", "DiffuGANDiTRefine"}
    before = json.dumps(api)
    moved = demo.with_seed_offset(api, 3)
    assert json.dumps(api) == before and demo.with_seed_offset(api, 0) == api
    assert all(moved[k]["inputs"]["seed"] == api[k]["inputs"]["seed"] + 3 for k in seeded)
    assert all(moved[k] == api[k] for k in api if k not in seeded)


def test_demo_counts_per_prompt_where_the_refined_column_is_closer(capsys):
    """The demo's figures per prompt: on how many images the refined one is at least as close to the prompt as its
    draft, the mean CLIP change, and for how many prompts that is most of their images (a tie is not most)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import demo

    clip = {("heart", "d0"): 0.1, ("heart", "r0"): 0.2, ("heart", "d1"): 0.3, ("heart", "r1"): 0.3,
            ("heart", "d2"): 0.5, ("heart", "r2"): 0.1, ("cat", "d0"): 0.4, ("cat", "r0"): 0.3,
            ("cat", "d1"): 0.2, ("cat", "r1"): 0.3}

    class Scores:  # the demo's Judge, read off the table above instead of the zoo CLIP
        def clip_score(self, text, path):
            return clip[(text, path.name)]

        @staticmethod
        def detail(path):
            return 2.0 if path.name.startswith("r") else 1.0

    rows = [(t, {"draft": Path(f"d{i}"), "refined": Path(f"r{i}")}) for t, n in (("heart", 3), ("cat", 2))
            for i in range(n)]
    out = demo.judge_prompted(Scores(), "wf", rows)
    assert out["closer_to_prompt"] == 3 and out["sharper"] == 5 and out["count"] == 5
    assert out["per_prompt"]["heart"]["closer"] == 2 and out["per_prompt"]["cat"]["closer"] == 1
    assert out["per_prompt"]["heart"]["mean_clip_change"] == pytest.approx((0.1 + 0 - 0.4) / 3)
    assert out["prompts_closer"] == 1 and out["prompts"] == 2  # heart 2 of 3; cat 1 of 2 is a tie
    assert "closer on most of its images for 1 of 2 prompts" in capsys.readouterr().out


def test_template_browser_lists_the_examples_with_thumbnails(fresh):
    import requests

    templates = fresh.get("/workflow_templates")
    assert sorted(templates["DiffuGAN"]) == sorted(p.stem for p in API), templates
    for path in API:  # what the frontend fetches for a custom node's template: <name>.json and <name>.jpg
        r = requests.get(f"{fresh.url}/api/workflow_templates/DiffuGAN/{path.stem}.json", timeout=30)
        assert r.status_code == 200 and r.json() == json.loads((EXAMPLES / path.name).read_text())
        r = requests.get(f"{fresh.url}/api/workflow_templates/DiffuGAN/{path.stem}.jpg", timeout=30)
        assert r.status_code == 200 and r.headers["Content-Type"] == "image/jpeg"


def test_example_inputs_are_installed_without_overwriting_the_users_files(fresh):
    inputs = fresh.base / "input"
    shipped = sorted(EXAMPLE_INPUTS.glob("*.png"))
    assert len(shipped) >= 4
    for src in shipped:
        if src.name == USER_FILE:
            assert Image.open(inputs / src.name).getpixel((0, 0)) == (40, 90, 200)
        else:
            assert _sha(inputs / src.name) == _sha(src), src.name
    assert {p.name for p in shipped} <= set(fresh.combo_options("LoadImage", "image"))


def _lint(server, paths) -> tuple[int, list[dict]]:
    lint = Path(sys.executable).parent / "comfy-lint"
    r = subprocess.run([str(lint), "--strict", "--json", "--server", server.url, *map(str, paths)],
                       capture_output=True, text=True, timeout=120)
    report = json.loads(r.stdout)
    assert report["summary"]["files"] == len(paths) and not report["unreadable"], r.stderr
    return r.returncode, [{**d, "file": Path(f["path"]).stem} for f in report["files"] for d in f["diagnostics"]]


def _user_model_missing(d: dict) -> bool:
    """The one diagnostic a fresh install may give: the user's own model, named in a workflow that needs one."""
    workflow = USER_MODELS.get(d["file"])
    return d["rule"] == "invalid-enum" and workflow is not None and any(
        f"'{m.file}'" in d["message"] for m in workflow.models)


def test_examples_validate_against_a_fresh_servers_object_info(fresh):
    """comfy-lint (PyPI, pinned in requirements-dev.txt) checks node types, required inputs, links and their types,
    and every combo value — model and input file names included — against the server's /object_info."""
    code, diagnostics = _lint(fresh, API)
    problems = [d for d in diagnostics if not _user_model_missing(d)]
    assert not problems, problems
    assert code == (1 if diagnostics else 0)
    named = {(d["file"], m.file) for d in diagnostics for m in USER_MODELS[d["file"]].models
             if f"'{m.file}'" in d["message"]}
    assert named == {(w, m.file) for w, uw in USER_MODELS.items() for m in uw.models}  # each user file, named


def test_the_linter_catches_what_a_fresh_install_lacks(fresh, tmp_path):
    """The check above is not vacuous: a missing model file, a missing input image and a wrong link are caught."""
    broken = json.loads((EXAMPLES / "api" / "user_emphasis.json").read_text())
    broken["8"]["inputs"]["ckpt_name"] = "not-shipped-dit.safetensors"
    broken["1"]["inputs"]["image"] = "written_by_a_demo.png"
    broken["10"]["inputs"]["model"] = ["3", 0]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    code, diagnostics = _lint(fresh, [tmp_path / "broken.json"])
    rules = sorted((d["node_id"], d["rule"]) for d in diagnostics)
    assert code == 1 and rules == [("1", "invalid-enum"), ("10", "type-mismatch"), ("8", "invalid-enum")]


SHIPPED_ONLY = [p for p in API if p.stem not in USER_MODELS]


@pytest.fixture(scope="module")
def second_install(tmp_path_factory):
    """Another fresh install, in its own process: a workflow run on both must give identical pictures."""
    yield from _fresh_install(tmp_path_factory, "second_install")


@pytest.mark.parametrize("path", SHIPPED_ONLY, ids=[p.stem for p in SHIPPED_ONLY])
def test_example_runs_on_a_fresh_install_identically_twice(fresh, second_install, path):
    """Each shipped workflow runs; run again with the same seeds on a second fresh server (another process: nothing
    cached, every node really runs) it saves identical pictures, byte for byte in pixels."""
    api = json.loads(path.read_text())
    run = fresh.run_prompt(api)
    assert run.ok, f"{run.error()}\n{fresh.log_tail()}"
    saves = [k for k, n in api.items() if n["class_type"] == "SaveImage"]
    assert saves and all(run.output_images(k) for k in saves)
    again = second_install.run_prompt(api)
    assert again.ok, again.error()
    for k in saves:
        first, second = read_images(run.output_images(k)), read_images(again.output_images(k))
        assert torch.equal(first, second), f"{path.stem}: node {k} saved different pictures for the same seeds"


def test_user_emphasis_raises_the_work_where_painted_and_clicked(fresh):
    """user_emphasis: the forehead painted in the mask editor (the example input's alpha) and a click on the cheek,
    plain regions the image statistics alone leave to few steps, get more refinement work (the Budget's level map,
    read back through the stock MaskToImage, and the step map the Refine node shows) than without them."""
    import numpy as np

    api = json.loads((EXAMPLES / "api" / "user_emphasis.json").read_text())
    api["90"] = {"class_type": "MaskToImage", "inputs": {"mask": ["7", 0]}}
    api["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "DiffuGAN/t_levels"}}
    api["10"]["inputs"]["seed"] = 1234  # not the example's own run: a cached Refine's preview is not in the history
    plain = json.loads(json.dumps(api))
    del plain["6"]["inputs"]["user_mask"]
    plain["6"]["inputs"]["points"] = ""
    levels, steps = {}, {}
    for name, prompt in (("emphasis", api), ("plain", plain)):
        run = fresh.run_prompt(prompt)
        assert run.ok, run.error()
        [path] = run.output_images("91")
        levels[name] = np.asarray(Image.open(path).convert("L"), dtype=np.float32) / 255
        [step_map] = run.output_images("10")  # the Refine node shows the step map it used (a temp preview)
        save_artifact(step_map, f"e2e_user_emphasis_step_map_{name}.png")
        save_artifact(path, f"e2e_user_emphasis_levels_{name}.png")
        steps[name] = np.asarray(Image.open(step_map).convert("RGB"), dtype=np.float32) / 255
    alpha = np.asarray(Image.open(EXAMPLE_INPUTS / "diffugan_emoji_painted.png"))[..., 3]
    painted = alpha == 0
    point = json.loads(api["6"]["inputs"]["points"])[0]
    yy, xx = np.mgrid[:painted.shape[0], :painted.shape[1]]
    clicked = (xx - point["x"]) ** 2 + (yy - point["y"]) ** 2 < (point["radius"] / 2) ** 2
    for region, where in (("painted", painted), ("clicked", clicked)):
        gain = levels["emphasis"][where].mean() - levels["plain"][where].mean()
        assert gain > 0.1, (region, gain)  # levels come in steps of 1/3
        full = {k: ((v[..., 0] > 0.8) & (v[..., 1] < 0.3))[where].mean() for k, v in steps.items()}  # red: all steps
        assert full["emphasis"] >= full["plain"], (region, full)  # never fewer steps where the user asked for more
    # The zoo DiT's 16 x 16 tokens of 16 px each get the mean level of their pixels, so the step map changes less
    # sharply than the level map above (where the emphasis shows pixel for pixel).
    assert np.abs(steps["emphasis"] - steps["plain"]).max() > 0.1
    rest = ~(painted | clicked)
    assert levels["emphasis"][rest].mean() <= levels["plain"][rest].mean() + 1e-6  # the budget holds: less elsewhere


def test_stylegan_draft_refined_by_a_stock_sd15_checkpoint(fresh, second_install):
    """stylegan_draft_sd15_refine with an SD1-format checkpoint under the name it uses (random weights, SD1.5's
    layout: ComfyUI's own loader detects it as SD15): stock CheckpointLoaderSimple, CLIPTextEncode, VAEEncode,
    SetLatentNoiseMask with our importance MASK, DifferentialDiffusion and KSampler. The mask is the per-pixel
    strength: DifferentialDiffusion lets a pixel into the denoising only once the noise level has fallen below its
    mask value, so where importance is ~0 it joins only the last, low-noise steps and changes far less from the
    draft's VAE round trip than where importance is high (random weights: any change is noise, so it is measured
    as the distance to the round trip)."""
    import numpy as np

    name = "stylegan_draft_sd15_refine"
    USER_MODELS[name].write_stand_ins(fresh.base / "models")
    code, diagnostics = _lint(fresh, [EXAMPLES / "api" / f"{name}.json"])
    assert code == 0 and not diagnostics, diagnostics
    api = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
    api["5"]["inputs"].update(width=256, height=256)  # a quarter of the pixels: the same graph, faster on a CPU
    api["90"] = {"class_type": "VAEDecode", "inputs": {"samples": ["9", 0], "vae": ["6", 2]}}  # the round trip
    api["91"] = {"class_type": "SaveImage", "inputs": {"images": ["90", 0], "filename_prefix": "DiffuGAN/t_rt"}}
    api["92"] = {"class_type": "MaskToImage", "inputs": {"mask": ["10", 0]}}
    api["93"] = {"class_type": "SaveImage", "inputs": {"images": ["92", 0], "filename_prefix": "DiffuGAN/t_imp"}}
    run = fresh.run_prompt(api, timeout=900)
    assert run.ok, f"{run.error()}\n{fresh.log_tail()}"
    [refined], [round_trip], [importance] = (run.output_images(k) for k in ("18", "91", "93"))
    save_artifact(refined, "e2e_sd15_refined.png")
    r, t = read_images([refined])[0], read_images([round_trip])[0]
    imp = torch.from_numpy(np.asarray(Image.open(importance).convert("L"), dtype=np.float32) / 255)
    change = (r - t).abs().mean(0)
    near = torch.nn.functional.max_pool2d(imp[None, None], 9, 1, 4)[0, 0]  # the most important within 4 px
    low, high = near <= torch.quantile(near, 0.2), imp >= torch.quantile(imp, 0.9)
    print(f"importance: low {float(imp[low].mean()):.3f}, high {float(imp[high].mean()):.3f}; change from the "
          f"round trip: low {float(change[low].mean()):.4f}, high {float(change[high].mean()):.4f}")
    assert float(imp[high].mean()) > 0.5 > 5 * float(imp[low].mean())
    assert change[high].mean() > 1.8 * change[low].mean(), (change[high].mean(), change[low].mean())  # 0.338/0.147
    # deterministic like the other workflows: the same checkpoint on the second fresh server, identical pictures
    USER_MODELS[name].write_stand_ins(second_install.base / "models")  # the same seeded weights
    again = second_install.run_prompt(api, timeout=900)
    assert again.ok, again.error()
    for k in ("18", "91", "93"):
        assert torch.equal(read_images(run.output_images(k)), read_images(again.output_images(k))), k


def test_var_draft_refined_by_dit_xl_with_the_published_files(fresh):
    """var_draft_dit_refine_imagenet with stand-ins of the four published files under their names (random weights in
    FoundationVision's and facebookresearch's formats: the loaders read the architecture off the weights): the VAR
    draft at 256 px, encoded by the SD VAE, refined region-adaptively by the DiT with the same class, decoded."""
    name = "var_draft_dit_refine_imagenet"
    USER_MODELS[name].write_stand_ins(fresh.base / "models")
    code, diagnostics = _lint(fresh, [EXAMPLES / "api" / f"{name}.json"])
    assert code == 0 and not diagnostics, diagnostics
    api = json.loads((EXAMPLES / "api" / f"{name}.json").read_text())
    run = fresh.run_prompt(api, timeout=900)
    assert run.ok, f"{run.error()}\n{fresh.log_tail()}"
    saves = {api[k]["inputs"]["filename_prefix"].rsplit("_", 1)[-1]: k for k, n in api.items()
             if n["class_type"] == "SaveImage"}
    draft, refined = (read_images(run.output_images(saves[s])) for s in ("draft", "refined"))
    assert draft.shape == refined.shape == (1, 3, 256, 256)
    assert not torch.equal(draft, refined)


def _held_out_set(root: Path) -> Path:
    """12 drawn smileys at 256 px in the emoji set's file format (8 training, 4 held-out records)."""
    from safetensors.torch import save_file

    from devkit.drawn import smiley

    sys.path.insert(0, str(ROOT / "scripts"))
    import zoo_data

    images, records = [], []
    for i in range(12):
        img = torch.roll(smiley(256, "open" if i % 2 else "smile")[0], shifts=(4 * (i % 3), 0), dims=(1, 2))
        images.append(((img * 0.5 + 0.5) * 255).round().byte().permute(1, 2, 0))
        style, category = zoo_data.STYLES[i % 2], zoo_data.CATEGORIES[i % 3]
        records.append({"name": f"smiley {i}", "style": style, "category": category,
                        "caption": f"smiley {i}, {category.lower()}, {style} style",
                        "split": "heldout" if i >= 8 else "train"})
    root.mkdir(parents=True)
    save_file({"images": torch.stack(images).contiguous()}, str(root / "emoji.safetensors"))
    (root / "emoji.json").write_text(json.dumps({"resolution": 256, "records": records}))
    return root


def test_workflow_evaluation_runs_the_shipped_graph_once_per_held_out_caption(fresh, tmp_path):
    """scripts/eval_workflows.py: the shipped hybrid graph, changed only in prompt, batch size, seeds and what --set
    says, run in the real server for two held-out captions and judged per stage (draft, VAE round trip, refined)."""
    sys.path.insert(0, str(ROOT / "scripts"))
    import eval_workflows as ew
    import train_zoo_clip as tzc

    from diffugan.models import clip_style as cs
    from diffugan.models import taesd

    prompt = json.loads((EXAMPLES / "api" / "text_to_image_hybrid.json").read_text())
    changes = ew.parse_set(["12.min_steps=0", "12.strength=0.2"], prompt)
    assert changes == {"12": {"min_steps": 0, "strength": 0.2}}
    for bad, why in (("12.min_steps", "NODE.INPUT=VALUE"), ("99.seed=1", "no input 'seed' on node '99'"),
                     ("12.model=1", "a link")):
        with pytest.raises(ValueError, match=why):
            ew.parse_set([bad], prompt)
    graph = ew.caption_graph(prompt, ("2", "text"), "a caption", 5, changes)
    assert graph["2"]["inputs"]["text"] == "a caption" and graph["4"]["inputs"]["batch_size"] == 1
    assert graph["4"]["inputs"]["seed"] == prompt["4"]["inputs"]["seed"] + 5 and graph["12"]["inputs"]["min_steps"] == 0
    assert prompt["12"]["inputs"]["min_steps"] == 3 and prompt["4"]["inputs"]["batch_size"] == 4  # shipped: untouched

    data = _held_out_set(tmp_path / "data")
    clip = cs.load_clip(ROOT / "zoo" / "clip_style" / "diffugan-emoji-clip.safetensors")
    vae = taesd.load_vae(ROOT / "zoo" / "vae" / "diffugan-emoji-vae-256.safetensors")
    figures, sheet = ew.evaluate(fresh, "text_to_image_hybrid", prompt, {}, data, clip, vae, [0, 2])
    assert figures["captions"] == 2 and figures["size"] == 256 and sheet.shape == (6, 3, 256, 256)
    assert figures["graph"]["12"]["min_steps"] == 3 and figures["seconds_per_image"] > 0
    style = tzc.heldout_captions(clip, data)[[0, 2]]
    draft_scores = (tzc.judged_features(clip, sheet[:2]) * style).sum(1)
    assert figures["draft"]["prompt_clip_score"] == pytest.approx(float(draft_scores.mean()), abs=1e-5)
    for stage in ("vae", "refined"):
        assert figures[stage]["closer_to_prompt"] in (0.0, 0.5, 1.0)
        assert figures[stage]["detail_ratio"] > 0 and torch.isfinite(torch.tensor(figures[stage]["prompt_fd"]))
    assert not torch.equal(sheet[4:], sheet[:2])  # the refined images are not the drafts
    import zoo_manifest

    card = zoo_manifest.card_workflows({"text_to_image_hybrid 12.min_steps=0": {**figures, "changes": changes}})
    assert "| `text_to_image_hybrid`, node 12's min_steps set to 0, node 12's strength set to 0.2 (2 captions," in card
    assert f"| refined | {figures['refined']['prompt_clip_score']:.4f} |" in card
