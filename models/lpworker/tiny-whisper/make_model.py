"""Writes a tiny multilingual Whisper with random weights, and the golden
outputs of the reference implementation (Hugging Face transformers on CPU
PyTorch: WhisperFeatureExtractor, WhisperForConditionalGeneration.generate on
one 30 s window, and the automatic-speech-recognition pipeline's decoding of
the generated tokens into text and timestamped chunks) that
lpworker's Candle `audio-to-text` pipeline must reproduce.

Files: config.json, generation_config.json, model.safetensors, tokenizer.json,
tokenizer_config.json, preprocessor_config.json (the layout of
openai/whisper-large-v3: text tokens, then <|endoftext|> and the other special
tokens, then the timestamp tokens <|0.00|> ... <|30.00|>), test.wav (the
generated input) and golden.json / golden.safetensors: the detected language,
the generated token ids with and without timestamps, the pipeline's text and
chunks, and the mel filters and the first log-mel frames.

    python models/lpworker/tiny-whisper/make_model.py [OUT_DIR]

Needs torch and transformers (4.57); run once, outputs committed.
"""
import json
import os
import sys
import wave

import numpy as np
import torch
from safetensors.numpy import save_file
from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperTokenizerFast
from transformers.generation import GenerationConfig, LogitsProcessor, LogitsProcessorList

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tiny_tokenizer import train  # noqa: E402

out_dir = sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(os.path.abspath(__file__))
os.makedirs(out_dir, exist_ok=True)

# Text tokens first, then the special tokens in Whisper's order, then timestamps.
raw = train(320, [])
SPECIAL = ["<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|fr|>", "<|de|>", "<|translate|>",
           "<|transcribe|>", "<|startoflm|>", "<|startofprev|>", "<|nospeech|>", "<|notimestamps|>"]
raw.add_special_tokens(SPECIAL)
raw.add_tokens([f"<|{i * 0.02:.2f}|>" for i in range(1501)])
ids = {t: raw.token_to_id(t) for t in SPECIAL}
assert ids["<|endoftext|>"] == 320 and raw.token_to_id("<|0.00|>") == ids["<|notimestamps|>"] + 1
tokenizer = WhisperTokenizerFast(tokenizer_object=raw, unk_token="<|endoftext|>", bos_token="<|endoftext|>",
                                 eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                 additional_special_tokens=SPECIAL[1:], clean_up_tokenization_spaces=True)
tokenizer.save_pretrained(out_dir)
vocab = raw.get_vocab_size()

features = WhisperFeatureExtractor(feature_size=80)
features.save_pretrained(out_dir)

config = WhisperConfig(
    vocab_size=vocab, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=256, decoder_ffn_dim=256,
    max_source_positions=1500, max_target_positions=448,
    decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
    eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
    # Large weights: clear greedy margins, so float rounding cannot flip a choice.
    init_std=1.0, torch_dtype="float32",
)

# As openai/whisper-large-v3's generation_config.json, scaled to this vocabulary.
generation = GenerationConfig(
    decoder_start_token_id=ids["<|startoftranscript|>"], bos_token_id=ids["<|endoftext|>"],
    eos_token_id=ids["<|endoftext|>"], pad_token_id=ids["<|endoftext|>"],
    forced_decoder_ids=[[1, None], [2, ids["<|transcribe|>"]]],
    lang_to_id={t: ids[t] for t in ["<|en|>", "<|fr|>", "<|de|>"]},
    task_to_id={"transcribe": ids["<|transcribe|>"], "translate": ids["<|translate|>"]},
    no_timestamps_token_id=ids["<|notimestamps|>"], prev_sot_token_id=ids["<|startofprev|>"],
    is_multilingual=True, max_initial_timestamp_index=50, max_length=448,
    begin_suppress_tokens=[220, ids["<|endoftext|>"]],
    suppress_tokens=[1, 2, 7, 8, 9, 10, 14, 25, 26, 27, 28, 29, 31, 58, 59, 60, 61, 62, 63],
)

# The input: 4.3 s of a speech-like signal (formant-like tones, syllable
# envelopes, a pause), 16 kHz mono 16-bit, as ai-runner hands Whisper its audio.
rate, seconds = 16000, 4.3
t = np.arange(int(rate * seconds)) / rate
envelope = np.clip(np.sin(2 * np.pi * 3.1 * t), 0, None) * (t % 2.0 < 1.6)
signal = envelope * (0.5 * np.sin(2 * np.pi * 220 * t) + 0.3 * np.sin(2 * np.pi * 870 * t)
                     + 0.2 * np.sin(2 * np.pi * 2400 * t))
rng = np.random.default_rng(7)
signal = signal + 0.01 * rng.standard_normal(len(t))
pcm = np.round(np.clip(signal, -1, 1) * 32767).astype("<i2")
with wave.open(os.path.join(out_dir, "test.wav"), "wb") as w:
    w.setnchannels(1)
    w.setsampwidth(2)
    w.setframerate(rate)
    w.writeframes(pcm.tobytes())
audio = pcm.astype(np.float32) / 32768.0
input_features = features(audio, sampling_rate=rate, return_tensors="pt").input_features

MAX_NEW = 48


class MarginRecorder(LogitsProcessor):
    """Last in the chain: records by how much each greedy choice won."""

    def __init__(self):
        self.margins = []

    def __call__(self, input_ids, scores):
        top = scores[0].topk(2).values
        self.margins.append(float(top[0] - top[1]) if torch.isfinite(top[1]) else float("inf"))
        return scores


def run(model, timestamps):
    recorder = MarginRecorder()
    with torch.no_grad():
        out = model.generate(input_features, return_timestamps=timestamps, max_new_tokens=MAX_NEW,
                             force_unique_generate_call=True,
                             logits_processor=LogitsProcessorList([recorder]))
    return out[0].tolist(), min(recorder.margins)


for seed in range(200):
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config).eval()
    model.generation_config = generation
    with_ts, m1 = run(model, True)
    without_ts, m2 = run(model, False)
    n_ts = sum(1 for i in with_ts if i > ids["<|notimestamps|>"])
    # Wanted: several timestamped chunks, a real text reply, clear margins.
    if n_ts >= 4 and len(without_ts) > 12 and min(m1, m2) > 0.02:
        break
else:
    sys.exit("no seed gave a usable model")

model.save_pretrained(out_dir, safe_serialization=True)
generation.save_pretrained(out_dir)


def decode_asr(ids, timestamps):
    """The ASR pipeline's own post-processing (text and timestamped chunks)
    applied to the ids above."""
    text, extra = tokenizer._decode_asr([{"tokens": torch.tensor([ids])}], return_timestamps=timestamps,
                                        return_language=None, time_precision=0.02)
    return {"text": text, **extra}


result_ts = decode_asr(with_ts, True)
result_plain = decode_asr(without_ts, False)

save_file({"mel_filters": features.mel_filters.astype(np.float32),
           "log_mel_first_frames": input_features[0, :, :200].numpy().astype(np.float32)},
          os.path.join(out_dir, "golden.safetensors"))
golden = {
    "reference": "transformers 4.57: WhisperFeatureExtractor, WhisperForConditionalGeneration.generate (one 30 s window, greedy, float32 CPU), the ASR pipeline's _decode_asr",
    "seed": seed, "max_new_tokens": MAX_NEW, "input": "test.wav",
    "language_token_id": with_ts[1],
    "timestamps": {"ids": with_ts, "min_margin": round(m1, 4), "text": result_ts["text"],
                   "chunks": [{"timestamp": list(c["timestamp"]), "text": c["text"]} for c in result_ts["chunks"]]},
    "no_timestamps": {"ids": without_ts, "min_margin": round(m2, 4), "text": result_plain["text"]},
}
with open(os.path.join(out_dir, "golden.json"), "w") as f:
    json.dump(golden, f, indent=1)
print(f"seed {seed}: wrote {out_dir}")
print(json.dumps(golden)[:1500])
