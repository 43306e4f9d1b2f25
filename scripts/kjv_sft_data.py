#!/usr/bin/env python3
"""Prompt/response pairs from the King James Bible text `bible` prints, for the sft demo.

usage: kjv_sft_data.py KJV.txt OUT.jsonl

Each verse becomes {"prompt": "<Book> <chapter>:<verse>\n", "response": "<verse text>"}: the
model learns to recite a verse from its reference. Only the response is scored (`task.name: sft`),
so the reference tokens are read, never predicted.
"""
import json
import re
import sys

HEADER = re.compile(r"^(\S.*) (\d+)$")      # "Genesis 1", "1 Kings 3"
VERSE = re.compile(r"^\s+(\d+) (.*)$")     # "  3 And God said, ..."


def verses(lines):
    book = chapter = None
    number, text = None, []
    for line in lines:
        line = line.rstrip("\n")
        header = HEADER.match(line)
        verse = VERSE.match(line)
        if header and not line.startswith(" "):
            if number is not None:
                yield book, chapter, number, " ".join(text)
            book, chapter, number, text = header.group(1), header.group(2), None, []
        elif verse:
            if number is not None:
                yield book, chapter, number, " ".join(text)
            number, text = verse.group(1), [verse.group(2).strip()]
        elif line.strip() and number is not None:
            text.append(line.strip())
    if number is not None:
        yield book, chapter, number, " ".join(text)


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    count = 0
    with open(sys.argv[1], encoding="utf-8") as src, open(sys.argv[2], "w", encoding="utf-8") as out:
        for book, chapter, number, text in verses(src):
            out.write(json.dumps({"prompt": f"{book} {chapter}:{number}\n", "response": text}) + "\n")
            count += 1
    print(f"wrote {sys.argv[2]}: {count} verses")


if __name__ == "__main__":
    main()
