"""Writes a tiny Stable Diffusion (SD-Turbo's layout: CLIP text encoder with
GELU, UNet with linear projections, AutoencoderKL, Euler scheduler with
trailing timesteps) with random weights, and the golden outputs of the
reference implementation (Hugging Face diffusers' StableDiffusionPipeline on
CPU PyTorch) that lpworker's Candle `text-to-image` pipeline must reproduce
within the tolerance its test states.

Files (diffusers layout): model_index.json, scheduler/, text_encoder/,
tokenizer/ (with tokenizer.json), unet/, vae/, and golden.safetensors: the
initial latents given to both sides, the prompt embeddings, the final latents
and the decoded images, for a turbo-style call (2 steps, no guidance) and a
classifier-free-guidance call (3 steps, guidance 5, negative prompt).

    python models/lpworker/tiny-sd/make_model.py [OUT_DIR]

Needs torch, diffusers and transformers; run once, outputs committed.
"""
import json
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, PreTrainedTokenizerFast
from tokenizers import processors

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_tokenizer import train  # noqa: E402

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(0)

raw = train(320, ["<|startoftext|>", "<|endoftext|>", "!"])
bos, eos = raw.token_to_id("<|startoftext|>"), raw.token_to_id("<|endoftext|>")
raw.post_processor = processors.TemplateProcessing(
    single="<|startoftext|> $A <|endoftext|>", special_tokens=[("<|startoftext|>", bos), ("<|endoftext|>", eos)])
tokenizer = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<|startoftext|>", eos_token="<|endoftext|>",
                                    pad_token="!", unk_token="<|endoftext|>", model_max_length=77)

text_encoder = CLIPTextModel(CLIPTextConfig(
    vocab_size=raw.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
    num_attention_heads=4, max_position_embeddings=77, hidden_act="gelu", projection_dim=32,
    bos_token_id=bos, eos_token_id=eos, pad_token_id=raw.token_to_id("!"))).eval()
unet = UNet2DConditionModel(
    sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
).eval()
vae = AutoencoderKL(
    in_channels=3, out_channels=3, block_out_channels=(32, 64), layers_per_block=1, latent_channels=4,
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), norm_num_groups=32, sample_size=32,
    scaling_factor=0.18215,
).eval()
# Random weights are tiny by default; scale the UNet's so that it changes the
# latents visibly at every step (a test of the arithmetic, not of art).
with torch.no_grad():
    for p in unet.parameters():
        p.mul_(3.0)
scheduler = EulerDiscreteScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing", interpolation_type="linear",
    use_karras_sigmas=False)

pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               scheduler=scheduler, safety_checker=None, feature_extractor=None,
                               requires_safety_checker=False)
pipe.save_pretrained(out_dir, safe_serialization=True)
tokenizer.save_pretrained(os.path.join(out_dir, "tokenizer"))

height = width = 32  # latents 16x16 (the VAE halves each side once)
golden = {}
cases = {
    "turbo": dict(prompt="a quick brown fox", steps=2, guidance=0.0, negative=None),
    "cfg": dict(prompt="the capital of France", steps=3, guidance=5.0, negative="blurry"),
}
for name, c in cases.items():
    gen = torch.Generator().manual_seed(42)
    latents = torch.randn((1, 4, height // 2, width // 2), generator=gen)
    captured = {}

    def keep(pipe_, step, timestep, kwargs):
        captured["latents"] = kwargs["latents"].clone()
        return kwargs

    with torch.no_grad():
        out = pipe(c["prompt"], negative_prompt=c["negative"], num_inference_steps=c["steps"],
                   guidance_scale=c["guidance"], height=height, width=width, latents=latents.clone(),
                   output_type="np", callback_on_step_end=keep, callback_on_step_end_tensor_inputs=["latents"])
        ids = tokenizer(c["prompt"], padding="max_length", max_length=77, truncation=True,
                        return_tensors="pt").input_ids
        embeds = text_encoder(ids)[0]
    golden[f"{name}.initial_latents"] = latents.contiguous()
    golden[f"{name}.prompt_embeds"] = embeds[0].contiguous()
    golden[f"{name}.final_latents"] = captured["latents"][0].contiguous()
    golden[f"{name}.image"] = torch.from_numpy(np.ascontiguousarray(out.images[0])).float()
    golden[f"{name}.prompt_ids"] = ids[0].to(torch.int64).contiguous()
    print(name, "image mean", float(out.images[0].mean()), "std", float(out.images[0].std()),
          "latent change", float((captured["latents"] - latents * scheduler.init_noise_sigma).abs().mean()))

save_file(golden, os.path.join(out_dir, "golden.safetensors"))
with open(os.path.join(out_dir, "golden.json"), "w") as f:
    json.dump({"reference": "diffusers StableDiffusionPipeline, float32 CPU, output_type=np",
               "height": height, "width": width, "cases": cases}, f, indent=1)
print("wrote", out_dir)
