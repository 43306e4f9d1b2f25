#!/usr/bin/env python3
"""Peer for bench/tokenizer_bench.cpp: Hugging Face tokenizers on the same text.

  python3 bench/tokenizer_bench.py TEXT_FILE [VOCAB] [ANVIL_TOKENIZER_JSON]

TEXT_FILE is what `tokenizer_bench --text-out` wrote; documents are split at blank
lines the same way. Given anvil's tokenizer.json (`tokenizer_bench --save`), also
reports how many merges agree and whether the encodings are identical.
Set RAYON_NUM_THREADS=1 for a one-core comparison.
"""
import json
import sys
import time

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


def main():
    path = sys.argv[1]
    vocab = int(sys.argv[2]) if len(sys.argv) > 2 else 8192
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        text = f.read()
    docs, start = [], 0
    while start < len(text):
        end = text.find("\n\n", start)
        end = len(text) if end < 0 else end + 2
        docs.append(text[start:end])
        start = end
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    t0 = time.perf_counter()
    tok.train_from_iterator(docs, trainer)
    train_s = time.perf_counter() - t0
    print(f"tokenizers: train to {tok.get_vocab_size()} tokens: {train_s:.2f} s")
    fresh = Tokenizer.from_str(tok.to_str())
    t0 = time.perf_counter()
    ids = fresh.encode(text).ids
    cold_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fresh.encode(text)
    warm_s = time.perf_counter() - t0
    mb = len(text.encode("utf-8", "surrogateescape")) / 2**20
    print(f"tokenizers: encode {len(ids)} tokens: {cold_s:.2f} s cold ({mb / cold_s:.1f} MB/s), "
          f"{warm_s:.2f} s warm ({mb / warm_s:.1f} MB/s)")
    t0 = time.perf_counter()
    batch = fresh.encode_batch(docs)
    batch_s = time.perf_counter() - t0
    print(f"tokenizers: encode_batch of the {len(docs)} documents: {sum(len(e.ids) for e in batch)} tokens, "
          f"{batch_s:.2f} s ({mb / batch_s:.1f} MB/s; splitting at documents changes a few tokens)")
    if len(sys.argv) > 3:
        anvil = Tokenizer.from_file(sys.argv[3])
        ours = json.loads(anvil.to_str())["model"]["merges"]
        theirs = json.loads(tok.to_str())["model"]["merges"]
        agree = 0
        while agree < min(len(ours), len(theirs)) and ours[agree] == theirs[agree]:
            agree += 1
        print(f"merges: anvil {len(ours)}, tokenizers {len(theirs)}, identical prefix {agree}")
        print("encodings of the text identical:", anvil.encode(text).ids == ids)


if __name__ == "__main__":
    main()
