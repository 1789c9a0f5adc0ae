"""The shipped full-hybrid workflow (text_to_image_hybrid) on the real server with the zoo's trained models: CLIP
Style Loader -> Style Encode (the prompt) -> the text-conditioned zoo StyleGAN2 draws the drafts -> stock ImageScale
/ VAEEncode -> learned importance + a clicked point (Merge Emphasis) -> budget levels -> the zoo ViT ControlNet on
the draft's edges -> region-adaptive DiT Refine with the same prompt -> Decode Refinement (the draft + what the
refiner changed).

What this checks: the graph runs on the zoo files where the pack ships them; the prompt steers the StyleGAN (the
same seed gives other drafts for another prompt, and the zoo CLIP, which no StyleGAN loss used, matches each
prompt's drafts to their own prompt); the refine step refines its drafts rather than replacing them."""
import json

import torch

from devkit.harness import ROOT, run_prompted_refine, save_artifact

WORKFLOW = json.loads((ROOT / "example_workflows" / "api" / "text_to_image_hybrid.json").read_text())
PROMPTS = ("red heart", "grinning face")


def test_zoo_stylegan_is_listed(server):
    names = server.combo_options("DiffuGANStyleGANLoader", "ckpt_name")
    assert "diffugan-emoji-stylegan.safetensors" in names


def test_coarse_to_fine_workflow_runs_on_the_zoo_and_the_prompt_steers_the_draft(server):
    from diffugan.models import clip_style as cs

    batch = WORKFLOW["4"]["inputs"]["batch_size"]
    drafts_by_prompt = []
    for k, text in enumerate(PROMPTS):
        drafts, refined, d, r = run_prompted_refine(server, WORKFLOW, text, ("14", "16", "17"), batch)  # strength 0.1
        drafts_by_prompt.append(d)
        save_artifact(drafts[0], f"e2e_zoo_c2f_draft_{k}.png")
        save_artifact(refined[0], f"e2e_zoo_c2f_refined_{k}.png")
    # the same seed, another prompt: other drafts
    assert float((drafts_by_prompt[0] - drafts_by_prompt[1]).abs().mean()) > 0.05
    # each prompt's drafts are closer, for the zoo CLIP, to their own prompt than to the other one
    clip = cs.load_clip(ROOT / "zoo" / "clip_style" / "diffugan-emoji-clip.safetensors")
    with torch.no_grad():
        text = clip.encode_texts(list(PROMPTS))
        sims = [clip.encode_images(d) @ text.T for d in drafts_by_prompt]
    for k, sim in enumerate(sims):
        mean = sim.mean(0)
        print(f"drafts for {PROMPTS[k]!r}: zoo-CLIP similarity to {PROMPTS[0]!r} {mean[0]:.3f}, to {PROMPTS[1]!r} "
              f"{mean[1]:.3f}")
        assert mean[k] > mean[1 - k], (PROMPTS[k], mean.tolist())
