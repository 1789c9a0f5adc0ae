"""Inside the real ComfyUI: every node of the pack registers, with a valid schema and our naming rules."""
import torch



def test_every_pack_node_is_registered(comfy, pack_node_ids):
    assert pack_node_ids, "the pack registered no nodes"
    missing = [n for n in pack_node_ids if n not in comfy.NODE_CLASS_MAPPINGS]
    assert not missing, f"not registered in ComfyUI: {missing}"
    ours = [k for k, v in comfy.NODE_CLASS_MAPPINGS.items()
            if getattr(v, "RELATIVE_PYTHON_MODULE", "") == "custom_nodes.DiffuGAN"]
    assert sorted(ours) == sorted(pack_node_ids)


def test_schemas_are_valid_and_follow_conventions(comfy, pack_node_ids):
    for node_id in pack_node_ids:
        cls = comfy.NODE_CLASS_MAPPINGS[node_id]
        schema = cls.GET_SCHEMA()
        schema.validate()
        assert node_id.startswith("DiffuGAN"), node_id
        assert schema.category.startswith("DiffuGAN/"), (node_id, schema.category)
        assert schema.display_name and schema.display_name.startswith("DiffuGAN "), node_id
        assert schema.description, f"{node_id} has no description (shown as the node's tooltip)"
        info = cls.GET_NODE_INFO_V1()  # what /object_info serves
        for io_type in info["output"]:
            assert io_type.isupper(), (node_id, io_type)
            stock = {"IMAGE", "MASK", "LATENT", "MODEL", "SAMPLER", "SIGMAS", "CONDITIONING", "INT", "FLOAT", "STRING"}
            assert io_type in stock or io_type.startswith("DIFFUGAN_"), f"{node_id}: custom type {io_type} unprefixed"


def test_web_directory_is_registered(comfy):
    assert any(p.endswith("/js") or p.endswith("DiffuGAN/js") for p in comfy.EXTENSION_WEB_DIRS.values())


def test_importance_preview_runs_in_comfy(run_node):
    image = torch.rand(2, 24, 32, 3)
    mask = torch.zeros(1, 12, 16)
    mask[:, 2:6, 2:6] = 1
    out = run_node("DiffuGANImportancePreview", image=image, importance=mask, opacity=0.5)
    preview = out.args[0]
    assert preview.shape == image.shape and preview.dtype == torch.float32
    assert out.ui is not None  # shown on the node in the UI


def test_every_category_has_a_stage_colour_in_the_frontend(comfy, pack_node_ids):
    import re
    from pathlib import Path

    js = (Path(__file__).resolve().parents[2] / "js" / "diffugan.js").read_text()
    coloured = set(re.findall(r'"(DiffuGAN/[^"]+)":\s*\[', js))
    categories = {comfy.NODE_CLASS_MAPPINGS[n].GET_SCHEMA().category for n in pack_node_ids}
    assert categories <= coloured, f"categories without a stage colour in js/diffugan.js: {categories - coloured}"


def test_advanced_twins_show_more_than_the_simple_nodes(comfy):
    """A node shows what a user sets; research switches live on its (Advanced) twin, as KSampler's do."""
    for simple in ("DiffuGANDiTRefine", "DiffuGANControlNetApply", "DiffuGANStyleInject"):
        plain = comfy.NODE_CLASS_MAPPINGS[simple].GET_SCHEMA()
        advanced = comfy.NODE_CLASS_MAPPINGS[simple + "Advanced"].GET_SCHEMA()
        names = [i.id for i in plain.inputs]
        assert advanced.display_name == plain.display_name + " (Advanced)"
        assert names == [i.id for i in advanced.inputs][: len(names)] or set(names) < {i.id for i in advanced.inputs}
        assert len(names) <= 10, (simple, names)
