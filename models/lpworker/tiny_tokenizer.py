"""A tiny byte-level BPE tokenizer for the generated test models.

Trained on a fixed English text with a fixed vocabulary size, so every run
writes the same tokenizer.json. Used by the tiny-llama and tiny-whisper
scripts; needs the `tokenizers` package (a dependency of `transformers`).
"""
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

CORPUS = [
    "Livepeer is a marketplace for video and AI compute.",
    "Orchestrators transcode video segments and run AI pipelines for gateways.",
    "Gateways pay with probabilistic tickets; a winning ticket is redeemed on chain.",
    "The quick brown fox jumps over the lazy dog.",
    "Hello, how are you today? I am fine, thank you very much.",
    "What is the capital of France? The capital of France is Paris.",
    "Speech recognition turns audio into text with timestamps for each chunk.",
    "A small model with random weights still computes the same numbers everywhere.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000.",
]


def train(vocab_size, special_tokens):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special_tokens,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    return tok
