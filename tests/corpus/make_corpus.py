#!/usr/bin/env python3
"""Writes the fuzzers' seed inputs (committed; rerun to refresh them):

    python3 tests/corpus/make_corpus.py

tests/corpus/gguf/: small valid GGUF files built with the gguf package: a
byte-level BPE tokenizer (256 byte tokens, a few merges, control tokens, a
ChatML template) and one small tensor of each type the reader converts, so
the fuzzer starts from inputs that reach every accessor.
tests/corpus/tokenizer/: texts for the tokenizer fuzzer (first byte: flags).
"""
import os

import numpy as np
import gguf

HERE = os.path.dirname(os.path.abspath(__file__))


def byte_alphabet():
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
    spelled, extra = {}, 0
    for b in range(256):
        if b in printable:
            spelled[b] = chr(b)
        else:
            spelled[b] = chr(256 + extra)
            extra += 1
    return spelled


def write_tokenizer_gguf(path, pre, with_tensors):
    spelled = byte_alphabet()
    tokens = [spelled[b] for b in range(256)]
    merges = ["\u0120 t", "h e", "i n", "\u0120t he", "l l", "he ll", "hell o", "\u0120 a", "1 2"]
    for merge in merges:
        tokens.append(merge.replace(" ", ""))
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<tool_call>"]
    types = [1] * len(tokens) + [3, 3, 3, 4]
    tokens += specials
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_bos_token_id(len(tokens) - 3)
    writer.add_eos_token_id(len(tokens) - 2)
    writer.add_add_bos_token(False)
    writer.add_chat_template("{{ '<|im_start|>system\\nYou are a tiny test model.<|im_end|>\\n' }}")
    writer.add_uint32("test.u32", 7)
    writer.add_float32("test.f32", 1.5)
    writer.add_float64("test.f64", -2.25)
    writer.add_bool("test.bool", True)
    writer.add_int64("test.i64", -9)
    writer.add_array("test.ints", [1, 2, 3])
    if with_tensors:
        rng = np.random.default_rng(0)
        writer.add_tensor("f32", rng.standard_normal(32).astype(np.float32))
        writer.add_tensor("f16", rng.standard_normal(32).astype(np.float16))
        for name, kind, block_bytes, _ in (("q8_0", gguf.GGMLQuantizationType.Q8_0, 34, 32),
                                               ("q4_0", gguf.GGMLQuantizationType.Q4_0, 18, 32),
                                               ("q4_1", gguf.GGMLQuantizationType.Q4_1, 20, 32),
                                               ("q5_0", gguf.GGMLQuantizationType.Q5_0, 22, 32),
                                               ("q4_k", gguf.GGMLQuantizationType.Q4_K, 144, 256),
                                               ("q6_k", gguf.GGMLQuantizationType.Q6_K, 210, 256)):
            raw = rng.integers(0, 256, block_bytes, dtype=np.uint8)
            raw[0:2] = np.frombuffer(np.float16(0.5).tobytes(), dtype=np.uint8)
            writer.add_tensor(name, raw, raw_shape=(block_bytes,), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def main():
    write_tokenizer_gguf(os.path.join(HERE, "gguf", "tokenizer-smollm.gguf"), "smollm", True)
    write_tokenizer_gguf(os.path.join(HERE, "gguf", "tokenizer-qwen2.gguf"), "qwen2", False)
    texts = [
        b"\x01Hello, world! It's 2024.\n",
        b"\x01<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n",
        b"\x00  spaces\t\ttabs \r\n\r\n trailing   ",
        "\x01Caf\u00e9 e\u0301 \u4f60\u597d \U0001F600 \u0663\u0664 \uac00\u1100\u1161\u11a8".encode(),
        b"\x00def f(x):\n    return x ** 2  # 'quoted' \"double\"\n",
        b"\x01\xff\xfe invalid \xc0\xaf utf-8 \xed\xa0\x80",
    ]
    for i, text in enumerate(texts):
        with open(os.path.join(HERE, "tokenizer", "seed-%d.txt" % i), "wb") as f:
            f.write(text)


if __name__ == "__main__":
    main()
