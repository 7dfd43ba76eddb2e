#!/usr/bin/env python3
"""Writes the tokenizer test vectors: Hugging Face token ids for a set of strings.

    python3 tests/vectors/make_tokenizer_vectors.py \\
        "$(scripts/fetch-model.sh smollm2)" "$(scripts/fetch-model.sh qwen)"

writes tests/vectors/tokenizer-smollm2.json and tests/vectors/tokenizer-qwen2.json
(needs transformers >= 4.45, tokenizers, gguf; checked with transformers 5.2,
tokenizers 0.23).

The reference is each model's Hugging Face tokenizer, built from the GGUF file
by transformers (AutoTokenizer.from_pretrained(dir, gguf_file=name)), with the
two parts its GGUF conversion does not restore put back as the models' own
tokenizer.json files have them:
  - SmolLM2: the pre-tokenizer Sequence[Digits(individual_digits=True),
    ByteLevel(use_regex=True)] (transformers maps the 'smollm' pre-type to
    plain ByteLevel, which keeps digit runs together);
  - Qwen2.5: the NFC normalizer (Qwen2Tokenizer's).

Each entry: "text" (for reading), "hex" (its UTF-8 bytes, what the test
encodes), "ids" (special tokens in the text parsed, as transformers does by
default), "ids_plain" (control tokens' text encoded as ordinary text, which
is the tokenizers library's encode_special_tokens=True) and "decoded_hex"
(what Hugging Face decodes "ids" to: the text itself, in NFC for Qwen, less
the bytes SmolLM2's vocabulary has no token for).
"""
import json
import os
import sys

import gguf
from tokenizers import normalizers, pre_tokenizers
from transformers import AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))

STRINGS = [
    "",
    "Hello world",
    "Hello, world! How are you today?",
    "The quick brown fox jumps over the lazy dog.",
    " leading space",
    "trailing spaces   ",
    "  two leading spaces",
    "multiple    spaces   between words",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four\n",
    "windows\r\nline\r\nendings\r\n",
    " \n \n  \t\n",
    "\n\n\n",
    "   ",
    "a \t\n b",
    "1",
    "12",
    "123",
    "1234567",
    "3.14159265358979",
    "x  12 and 007",
    "phone: +1 (555) 123-4567, year 2024, 1,000,000.50",
    "version v1.2.3-rc4",
    "I'm sure you're right, they've said it's what we'll do, I'd think.",
    "I'M SURE YOU'RE RIGHT, THEY'VE SAID IT'S WHAT WE'LL DO, I'D THINK.",
    "'s 't 're 've 'm 'll 'd 'S 'T 'RE 'Ve 'M 'LL 'D",
    "don't can't won't shouldn't",
    "Punctuation!!! ... ??? --- *** ((nested)) [brackets] {braces} <angle>",
    "email@example.com https://example.com/path?q=1&r=2#frag",
    "def add(a, b):\n    return a + b\n\nprint(add(1, 2))\n",
    "int main(void) {\n\tint x = 42;\n\treturn x >> 1;\n}\n",
    "for (i = 0; i < n; i++) { sum += v[i] * w[i]; }",
    "    indented code\n        more indented\n",
    "Caf\u00e9 na\u00efve r\u00e9sum\u00e9 \u00fcber Stra\u00dfe \u00e7a va",
    "\u00bfQu\u00e9 tal? \u00a1Muy bien! Ni\u00f1o, a\u00f1o, se\u00f1or.",
    "\u0391\u03b8\u03ae\u03bd\u03b1 \u03b5\u03af\u03bd\u03b1\u03b9 \u03b7 \u03c0\u03c1\u03c9\u03c4\u03b5\u03cd\u03bf\u03c5\u03c3\u03b1 \u03c4\u03b7\u03c2 \u0395\u03bb\u03bb\u03ac\u03b4\u03b1\u03c2.",
    "\u041c\u043e\u0441\u043a\u0432\u0430 \u2014 \u0441\u0442\u043e\u043b\u0438\u0446\u0430 \u0420\u043e\u0441\u0441\u0438\u0438.",
    "\u4f60\u597d\uff0c\u4e16\u754c\uff01\u4eca\u5929\u5929\u6c14\u5f88\u597d\u3002",
    "\u65e5\u672c\u8a9e\u306e\u30c6\u30ad\u30b9\u30c8\u3067\u3059\u3002",
    "\ud55c\uad6d\uc5b4 \ud14d\uc2a4\ud2b8",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629 \u0644\u063a\u0629 \u062c\u0645\u064a\u0644\u0629",
    "\u0939\u093f\u0928\u094d\u0926\u0940 \u092d\u093e\u0937\u093e",
    "emoji \U0001F600\U0001F44D\U0001F3FD \U0001F468\u200d\U0001F469\u200d\U0001F467 \u2764\ufe0f",
    "e\u0301 a\u0300 o\u0308 n\u0303 (combining marks)",
    "A\u030a\u0327 \u1e0b\u0323 q\u0307\u0323 \u1100\u1161\u11a8",
    "digits in other scripts: \u0663\u0664\u0665 \u0968\u0969 \u00bd \u00b2 \u2167",
    "non-breaking\u00a0space and\u2003em space and\u3000ideographic",
    "zero\u200bwidth\u200cjoiners\u200d",
    "quotes \u201csmart\u201d \u2018single\u2019 \u00abguillemets\u00bb",
    "math: \u2200x\u2208\u211d, x\u00b2 \u2265 0 \u21d2 \u221ax \u2248 1.414",
    "\u017fhort 's and long \u2019s: it'\u017f",
    "mixed\u4e2d\u6587English123\u6df7\u5408",
    "<|im_start|>user\nHi<|im_end|>",
    "text before <|im_start|>assistant\nand after<|im_end|>\nmore",
    "<|endoftext|><|endoftext|>",
    "almost special <|im_start and <im_end|> and <|unknown|>",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "nul\u0000byte and \u0001\u0002 controls \u007f",
    "bytes without a SmolLM2 token: \u0004 \u0006\u0013 end",
    "A" * 300,
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "The year 1969 saw 3 astronauts travel 384,400 km to the Moon.",
]


def reference(path):
    directory, name = os.path.split(os.path.abspath(path))
    tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    backend = tokenizer.backend_tokenizer
    field = gguf.GGUFReader(path).fields["tokenizer.ggml.pre"]
    pre_type = bytes(field.parts[-1]).decode()
    if pre_type == "smollm":
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True)])
    elif pre_type == "qwen2":
        backend.normalizer = normalizers.NFC()
    return tokenizer, backend, pre_type


def encode(backend, text, parse_special):
    backend.encode_special_tokens = not parse_special
    try:
        return backend.encode(text, add_special_tokens=False).ids
    finally:
        backend.encode_special_tokens = False


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    for path, out in zip(sys.argv[1:], ("tokenizer-smollm2.json", "tokenizer-qwen2.json")):
        tokenizer, backend, pre_type = reference(path)
        cases = []
        for text in STRINGS:
            ids = encode(backend, text, True)
            decoded = backend.decode(ids, skip_special_tokens=False)
            cases.append({"text": text, "hex": text.encode("utf-8").hex(),
                          "ids": ids, "ids_plain": encode(backend, text, False),
                          "decoded_hex": decoded.encode("utf-8").hex()})
        user = "What is the capital of France?"
        system = "You answer in one word."
        chats = []
        for sys_prompt in (None, system):
            messages = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + \
                       [{"role": "user", "content": user}]
            prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            chats.append({"system": sys_prompt, "user": user, "prompt_hex": prompt.encode("utf-8").hex(),
                          "prompt": prompt, "ids": encode(backend, prompt, True)})
        document = {"model": os.path.basename(path), "pre": pre_type,
                    "made_by": "python3 tests/vectors/make_tokenizer_vectors.py SMOLLM2.gguf QWEN.gguf",
                    "cases": cases, "chat": chats}
        with open(os.path.join(HERE, out), "w") as f:
            json.dump(document, f, indent=1, ensure_ascii=True)
            f.write("\n")
        print("wrote %s: %d strings, %d chat prompts" % (out, len(cases), len(chats)))


if __name__ == "__main__":
    main()
