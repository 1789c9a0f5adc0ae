"""scripts/train_style_mapper.py end to end on tiny files: trains, writes the mapper, its log and loss curve, and
resumes from its state file."""
import json
import subprocess
import sys

import torch

from devkit.harness import ROOT
from clip_files import write_hub_folder
from diffugan.models import clip_style as cs
from diffugan.models import stylegan as sg


def test_script_trains_writes_and_resumes(tmp_path):
    clip_file = write_hub_folder(tmp_path / "CLIP-tiny-test")
    torch.manual_seed(0)
    cfg = sg.StyleGANConfig("stylegan2", z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                            mapping_kwargs={"num_layers": 2}, synthesis_kwargs={"channel_base": 256, "channel_max": 32})
    sg.save_stylegan_safetensors(sg.Generator(cfg), tmp_path / "g.safetensors")
    out = tmp_path / "mapper.safetensors"
    cmd = [sys.executable, str(ROOT / "scripts" / "train_style_mapper.py"),
           "--stylegan", str(tmp_path / "g.safetensors"),
           "--clip", str(clip_file), "--out", str(out), "--batch", "4", "--heldout", "4", "--hidden", "32",
           "--layers", "2", "--eval-every", "5", "--prompts", "red;blue"]
    run = subprocess.run(cmd + ["--steps", "10"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    log = json.loads(out.with_suffix(".json").read_text())
    assert [c["step"] for c in log["curve"]] == [10] and [e["step"] for e in log["evals"]] == [0, 5, 10]
    assert {"heldout_sim_without", "heldout_sim_with", "text_sim_without", "text_sim_with"} <= set(log["evals"][-1])
    assert out.with_suffix(".png").stat().st_size > 0
    mapper = cs.load_mapper(out)
    assert (mapper.config.clip == cs.load_clip(clip_file).identity
            and mapper.config.generator.startswith("g.safetensors"))
    run = subprocess.run(cmd + ["--steps", "15"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "resumed at step 10" in run.stdout, run.stdout + run.stderr[-2000:]
    assert [e["step"] for e in json.loads(out.with_suffix(".json").read_text())["evals"]] == [0, 5, 10, 15]
