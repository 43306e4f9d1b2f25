#!/usr/bin/env python3
"""Hugging Face `tokenizers` oracle for tests/parity/tokenizer_parity_test.cpp.

  tokenizer_oracle.py encode TOKENIZER_JSON TEXT_FILE OUT_IDS_JSON
      Tokenizer.from_file(TOKENIZER_JSON).encode(text).ids -> JSON list.
  tokenizer_oracle.py train CORPUS_JSON VOCAB_SIZE OUT_TOKENIZER_JSON [SPECIAL ...]
      Trains a ByteLevel BPE (GPT-2 scheme) on the JSON list of texts in CORPUS_JSON
      with BpeTrainer(initial_alphabet=ByteLevel.alphabet()) and saves it.
  tokenizer_oracle.py train-many CORPORA_JSON VOCAB_SIZE OUT_PREFIX
      The same for each list of texts in CORPORA_JSON (a list of lists), saved as
      OUT_PREFIX0.json, OUT_PREFIX1.json, ...

Run with the python that sees PyPI packages (`tokenizers==0.23.3`, installed by
scripts/install_deps.sh).
"""
import json
import sys

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers


def encode(tokenizer_json, text_file, out_file):
    tok = Tokenizer.from_file(tokenizer_json)
    with open(text_file, encoding="utf-8", newline="") as f:
        text = f.read()
    ids = tok.encode(text).ids
    with open(out_file, "w") as f:
        json.dump(ids, f)


def train(corpus_json, vocab_size, out_file, specials):
    with open(corpus_json, encoding="utf-8") as f:
        texts = json.load(f)
    train_texts(texts, vocab_size, out_file, specials)


def train_texts(texts, vocab_size, out_file, specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=0,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    tok.save(out_file)


def main():
    cmd = sys.argv[1] if len(sys.argv) > 1 else ""
    if cmd == "encode" and len(sys.argv) == 5:
        encode(*sys.argv[2:5])
    elif cmd == "train" and len(sys.argv) >= 5:
        train(sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5:])
    elif cmd == "train-many" and len(sys.argv) == 5:
        with open(sys.argv[2], encoding="utf-8") as f:
            corpora = json.load(f)
        for i, texts in enumerate(corpora):
            train_texts(texts, int(sys.argv[3]), f"{sys.argv[4]}{i}.json", [])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
