"""Golden outputs of diffusers' StableDiffusionImg2ImgPipeline on the tiny
Stable Diffusion that make_model.py wrote (its weights are read from this
folder, not regenerated, so golden.safetensors and the model stay as they
are), for lpworker's Candle `image-to-image` pipeline to reproduce within the
tolerance its test states.

For a fixed 48x32 input image and a seeded torch generator, the file keeps
what the generator drew (the VAE posterior sample's noise, then the noise
added at the first kept timestep), so both sides start from the same numbers,
and what diffusers computed from them: the scaled init latents, the noised
latents, the final latents and the decoded image (also as diffusers computes them with the
UNet's GELU on the tanh approximation, as Candle's UNet does). Cases: turbo-style (2 steps,
strength 0.5: one step; no guidance), classifier-free guidance (4 steps,
strength 0.6: two steps; guidance 5, negative prompt), and strength so low
that no step is kept (what diffusers answers then is recorded too).

    python models/lpworker/tiny-sd/make_img2img_golden.py

Needs torch, diffusers, transformers, pillow; run once, outputs committed.
"""
import json
import os

import numpy as np
import torch
from diffusers import StableDiffusionImg2ImgPipeline
from diffusers.models import activations
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from safetensors.torch import save_file

here = os.path.dirname(os.path.abspath(__file__))
pipe = StableDiffusionImg2ImgPipeline.from_pretrained(here, safety_checker=None, feature_extractor=None,
                                                      requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
vae_scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)

height, width = 32, 48  # multiples of 8: diffusers' preprocessing does not resize
ys, xs = np.mgrid[0:height, 0:width]
pixels = np.stack([(xs * 5) % 256, (ys * 7) % 256, ((xs + ys) * 3 + 40) % 256], axis=-1).astype(np.uint8)
pixels[8:20, 12:30] = [200, 40, 90]  # a block, so the image has edges
image = Image.fromarray(pixels)

golden = {"input_image": torch.from_numpy(pixels).contiguous()}
cases = {
    "turbo": dict(prompt="a quick brown fox", steps=2, strength=0.5, guidance=0.0, negative=None),
    "cfg": dict(prompt="the capital of France", steps=4, strength=0.6, guidance=5.0, negative="blurry"),
}
shape = (1, pipe.vae.config.latent_channels, height // vae_scale, width // vae_scale)
for name, c in cases.items():
    # What the pipeline draws from its generator, in its order: the posterior
    # sample's noise (vae.encode(...).latent_dist.sample(generator)), then
    # prepare_latents' noise.
    gen = torch.Generator().manual_seed(42)
    sample_noise = randn_tensor(shape, generator=gen)
    noise = randn_tensor(shape, generator=gen)
    captured = {}

    def keep(pipe_, step, timestep, kwargs):
        captured.setdefault("first", kwargs["latents"].clone())
        captured["latents"] = kwargs["latents"].clone()
        return kwargs

    with torch.no_grad():
        out = pipe(c["prompt"], image=image, strength=c["strength"], negative_prompt=c["negative"],
                   num_inference_steps=c["steps"], guidance_scale=c["guidance"], output_type="np",
                   generator=torch.Generator().manual_seed(42), callback_on_step_end=keep,
                   callback_on_step_end_tensor_inputs=["latents"])
        # The same arithmetic by hand, from the recorded draws, to record the
        # intermediate tensors (and check that they are what the pipeline used).
        processed = pipe.image_processor.preprocess(image)
        dist = pipe.vae.encode(processed).latent_dist
        init_latents = (dist.mean + dist.std * sample_noise) * pipe.vae.config.scaling_factor
        scheduler = pipe.scheduler
        scheduler.set_timesteps(c["steps"])
        kept = min(int(c["steps"] * c["strength"]), c["steps"])
        start = c["steps"] - kept
        noised = init_latents + noise * scheduler.sigmas[start]
        # After the first step, the latents must follow from these noised ones.
        scheduler.set_timesteps(c["steps"])
        scheduler.set_begin_index(start)
        guided = c["guidance"] > 1
        embeds, negative = pipe.encode_prompt(c["prompt"], "cpu", 1, guided, c["negative"])
        context = torch.cat([negative, embeds]) if guided else embeds
        t = scheduler.timesteps[start]
        model_in = torch.cat([noised] * 2) if guided else noised
        model_in = scheduler.scale_model_input(model_in, t)
        eps = pipe.unet(model_in, t, encoder_hidden_states=context).sample
        if guided:
            u, cond = eps.chunk(2)
            eps = u + c["guidance"] * (cond - u)
        first = scheduler.step(eps, t, noised).prev_sample
    d = float((first - captured["first"]).abs().max())
    assert d < 1e-5, f"{name}: hand-computed first step differs from the pipeline's by {d}"
    golden[f"{name}.sample_noise"] = sample_noise.contiguous()
    golden[f"{name}.noise"] = noise.contiguous()
    golden[f"{name}.init_latents"] = init_latents.contiguous()
    golden[f"{name}.noised_latents"] = noised.contiguous()
    golden[f"{name}.final_latents"] = captured["latents"][0].contiguous()
    golden[f"{name}.image"] = torch.from_numpy(np.ascontiguousarray(out.images[0])).float()
    c["first_step"] = start
    c["sigma"] = float(scheduler.sigmas[start])
    print(name, "start", start, "sigma", c["sigma"], "image mean", float(out.images[0].mean()),
          "change from input", float(np.abs(out.images[0] - pixels / 255.0).mean()))

# The same cases with the UNet's GEGLU on the tanh approximation of GELU, as
# Candle's UNet computes it: what lpworker should match closely, where exact
# diffusers only loosely (guidance 5 amplifies the approximation's difference).
exact_gelu = activations.GEGLU.gelu
activations.GEGLU.gelu = lambda self, gate: torch.nn.functional.gelu(gate, approximate="tanh")
for name, c in cases.items():
    captured = {}

    def keep_last(pipe_, step, timestep, kwargs):
        captured["latents"] = kwargs["latents"].clone()
        return kwargs

    with torch.no_grad():
        out = pipe(c["prompt"], image=image, strength=c["strength"], negative_prompt=c["negative"],
                   num_inference_steps=c["steps"], guidance_scale=c["guidance"], output_type="np",
                   generator=torch.Generator().manual_seed(42), callback_on_step_end=keep_last,
                   callback_on_step_end_tensor_inputs=["latents"])
    golden[f"{name}.final_latents_tanh_gelu"] = captured["latents"][0].contiguous()
    golden[f"{name}.image_tanh_gelu"] = torch.from_numpy(np.ascontiguousarray(out.images[0])).float()
    print(name, "tanh-GELU vs exact: latents mean",
          float((captured["latents"][0] - golden[f"{name}.final_latents"]).abs().mean()))
activations.GEGLU.gelu = exact_gelu

# Strength so low that int(steps * strength) == 0: no timestep is kept.
low = dict(prompt="a quick brown fox", steps=2, strength=0.2, guidance=0.0)
try:
    with torch.no_grad():
        out = pipe(low["prompt"], image=image, strength=low["strength"], num_inference_steps=low["steps"],
                   guidance_scale=0.0, output_type="np", generator=torch.Generator().manual_seed(42))
    low["outcome"] = f"{len(out.images)} images, shape {tuple(np.asarray(out.images).shape)}"
except Exception as e:  # noqa: BLE001 (what it raises is what is recorded)
    low["outcome"] = f"{type(e).__name__}: {e}"
print("no step kept:", low["outcome"])

save_file(golden, os.path.join(here, "golden_img2img.safetensors"))
with open(os.path.join(here, "golden_img2img.json"), "w") as f:
    json.dump({"reference": "diffusers StableDiffusionImg2ImgPipeline, float32 CPU, output_type=np",
               "height": height, "width": width, "seed": 42, "cases": cases, "no_step": low}, f, indent=1)
print("wrote", here)
