"""Writes a tiny BLIP captioning model (transformers' BlipForConditionalGeneration,
the model class ai-runner's image-to-text runs, with the layout of
Salesforce/blip-image-captioning-large) with random weights, and the golden
outputs of the reference implementation (transformers on CPU PyTorch, float32)
that lpworker's Candle `image-to-text` pipeline must reproduce.

Files: config.json, model.safetensors (every tensor, the tied LM-head weight
included, as the published BLIP checkpoints have it), tokenizer.json (a tiny
uncased BERT WordPiece tokenizer with [PAD] [UNK] [CLS] [SEP] [MASK] and the
decoder's [DEC] start token), tokenizer_config.json, preprocessor_config.json,
test.png (a generated 50x37 gradient, so the resize to 48x48 works in both
directions), golden.safetensors and golden.json:

- pixel_values: what BlipProcessor (the PIL image processor: bicubic resize,
  rescale 1/255, OpenAI CLIP mean/std) makes of test.png, [3, 48, 48];
- image_embeds: the vision model's last hidden state (post layer norm);
- <case>.first_logits: the text decoder's logits over the prompt tokens
  (the last row picks the first generated token);
- <case>.ids: model.generate's greedy output ids (transformers' default
  length, 20 new tokens, stopping at [SEP]), and in golden.json the text
  BlipProcessor.decode(ids, skip_special_tokens=True) gives, the smallest
  margin between the first and second logit of any greedy step, for the
  unconditional case (prompt "") and a prompted one.

    python models/lpworker/tiny-blip/make_model.py [OUT_DIR]

Needs torch, transformers, tokenizers, safetensors, pillow, numpy; run once,
outputs committed.
"""
import json
import os
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertTokenizerFast, BlipConfig, BlipForConditionalGeneration, BlipProcessor
from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
os.makedirs(out_dir, exist_ok=True)
torch.manual_seed(0)

CORPUS = [
    "a picture of a cat sitting on a couch",
    "a photography of a red car parked on the street",
    "two dogs playing in the grass near a tree",
    "a man riding a bike down the road at sunset",
    "a bowl of fruit on a wooden table",
    "an orchestrator transcodes video for the livepeer network",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
# A fixed vocabulary (the WordPiece trainer breaks ties differently from run
# to run): the specials, every letter and digit alone and as a "##" suffix,
# and the corpus' words but "picture", so that "a picture of" splits into
# word pieces.
chars = "abcdefghijklmnopqrstuvwxyz0123456789"
words = sorted({w for line in CORPUS for w in line.split()} - {"picture"})
vocab = SPECIALS + list(chars) + ["##" + c for c in chars] + words
raw = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
raw.add_special_tokens(SPECIALS)
raw.normalizer = normalizers.BertNormalizer(lowercase=True)
raw.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
raw.decoder = decoders.WordPiece(prefix="##", cleanup=True)
cls, sep = raw.token_to_id("[CLS]"), raw.token_to_id("[SEP]")
raw.post_processor = processors.TemplateProcessing(
    single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
tokenizer = BertTokenizerFast(tokenizer_object=raw, unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]",
                              cls_token="[CLS]", mask_token="[MASK]", bos_token="[DEC]", model_max_length=512)
tokenizer.add_special_tokens({"bos_token": "[DEC]"})
bos = tokenizer.convert_tokens_to_ids("[DEC]")
vocab_size = len(tokenizer)

SIDE = 48
config = BlipConfig(
    text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, projection_dim=32,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=64,
                     bos_token_id=bos, eos_token_id=sep, pad_token_id=raw.token_to_id("[PAD]"),
                     sep_token_id=sep),
    vision_config=dict(hidden_size=32, intermediate_size=64, projection_dim=32, num_hidden_layers=2,
                       num_attention_heads=4, image_size=SIDE, patch_size=16),
    projection_dim=32, image_text_hidden_size=32,
)
model = BlipForConditionalGeneration(config).eval()
# Default initialisation leaves every logit near zero, where greedy decoding
# would pick among near-ties; larger weights give decisive, varied tokens (a
# test of the arithmetic, not of captions).
with torch.no_grad():
    for name, p in model.named_parameters():
        if "LayerNorm" in name or "layer_norm" in name or "layernorm" in name:
            continue
        p.copy_(torch.randn_like(p) * (0.5 if p.dim() > 1 else 0.1))
model.tie_weights()

image_processor = BlipImageProcessorPil(size={"height": SIDE, "width": SIDE})
processor = BlipProcessor(image_processor=image_processor, tokenizer=tokenizer)

model.save_pretrained(out_dir, safe_serialization=True)
state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
tokenizer.save_pretrained(out_dir)
# The published checkpoints' layout: preprocessor_config.json, and no
# generation_config.json (transformers' defaults apply).
image_processor.to_json_file(os.path.join(out_dir, "preprocessor_config.json"))
for extra in ["generation_config.json", "processor_config.json"]:
    if os.path.exists(os.path.join(out_dir, extra)):
        os.remove(os.path.join(out_dir, extra))

# A deterministic test image, not square and not the model's size.
w, h = 50, 37
xs, ys = np.meshgrid(np.arange(w), np.arange(h))
rgb = np.stack([(xs * 255) // (w - 1), (ys * 255) // (h - 1), ((xs * 7 + ys * 13) % 256)], axis=-1)
Image.fromarray(rgb.astype(np.uint8)).save(os.path.join(out_dir, "test.png"))
image = Image.open(os.path.join(out_dir, "test.png")).convert("RGB")

golden, cases = {}, {}
with torch.no_grad():
    pixel_values = processor(images=image, return_tensors="pt").pixel_values
    image_embeds = model.vision_model(pixel_values=pixel_values)[0]
    golden["pixel_values"] = pixel_values[0].contiguous()
    golden["image_embeds"] = image_embeds[0].contiguous()
    for name, prompt in [("unconditional", ""), ("prompted", "a picture of")]:
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        out = model.generate(**inputs, output_scores=True, return_dict_in_generate=True)
        ids = out.sequences[0]
        margins = [float(torch.topk(s[0], 2).values[0] - torch.topk(s[0], 2).values[1]) for s in out.scores]
        prompt_ids = inputs.input_ids.clone()
        prompt_ids[:, 0] = bos
        prompt_ids = prompt_ids[:, :-1]
        logits = model.text_decoder(input_ids=prompt_ids, encoder_hidden_states=image_embeds).logits
        golden[f"{name}.first_logits"] = logits[0].contiguous()
        golden[f"{name}.ids"] = ids.to(torch.int64).contiguous()
        text = processor.decode(ids, skip_special_tokens=True)
        cases[name] = {"prompt": prompt, "ids": ids.tolist(), "text": text, "min_margin": min(margins)}
        print(name, ids.tolist(), repr(text), "min margin", min(margins))

save_file(golden, os.path.join(out_dir, "golden.safetensors"))
with open(os.path.join(out_dir, "golden.json"), "w") as f:
    json.dump({"reference": "transformers BlipForConditionalGeneration.generate (greedy; transformers' default "
                            "length: 20 new tokens, at most max_position_embeddings in all), "
                            "BlipProcessor with the PIL image processor, float32 CPU",
               "transformers": __import__("transformers").__version__, "torch": torch.__version__,
               "image": "test.png", "cases": cases}, f, indent=1)
print("wrote", out_dir, "vocab", vocab_size, "bos", bos, "sep", sep)
