#!/usr/bin/env python3
"""Writes the seed inputs of the text_cache and detect_request fuzz targets (standard library only).

text_cache: a valid cache file for class "bottle" of model "fuzz-model" (as the fuzz target's bank
expects), and the same with a flipped byte, a wrong checksum and a truncated header.
detect_request: DetectRequest messages in wire format: minimal, with every option set, with a
custom spec, with a raw tensor.
"""
import hashlib
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def cache_file(features, prompts, model="fuzz-model", key="spec/2:6:bottle:6:object[0][0][0]"):
    f_bytes = struct.pack("<%df" % len(features), *features)
    p_bytes = struct.pack("<%df" % len(prompts), *prompts)
    content = hashlib.sha256(b"[2, 4]" + f_bytes + b"[6, 4]" + p_bytes).hexdigest()
    header = {
        "__metadata__": {"format": "anoclip-text-cache/2", "model": model,
                         "key_sha256": hashlib.sha256(key.encode()).hexdigest(), "sha256": content},
        "features": {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, len(f_bytes)]},
        "prompts": {"dtype": "F32", "shape": [6, 4], "data_offsets": [len(f_bytes), len(f_bytes) + len(p_bytes)]},
    }
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + f_bytes + p_bytes


def varint(n):
    out = b""
    while True:
        byte = n & 0x7F
        n >>= 7
        out += bytes([byte | (0x80 if n else 0)])
        if not n:
            return out


def field(number, wire_type, payload):
    key = varint((number << 3) | wire_type)
    if wire_type == 2:
        return key + varint(len(payload)) + payload
    return key + payload


def string(number, text):
    return field(number, 2, text.encode() if isinstance(text, str) else text)


def write(folder, name, data):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as out:
        out.write(data)


def main():
    cache = os.path.join(HERE, "corpus", "text_cache")
    good = cache_file([0.5] * 8, [0.25] * 24)
    write(cache, "valid", good)
    flipped = bytearray(good)
    flipped[-3] ^= 0x40
    write(cache, "flipped_byte", bytes(flipped))
    write(cache, "other_model", cache_file([0.5] * 8, [0.25] * 24, model="another-model"))
    write(cache, "truncated", good[: len(good) // 2])

    requests = os.path.join(HERE, "corpus", "detect_request")
    spec = string(1, "bottle") + field(2, 0, varint(1))
    minimal = string(2, b"\x89PNG") + string(4, spec)
    write(requests, "minimal", minimal)
    tta = field(1, 0, varint(5)) + field(2, 5, struct.pack("<f", 1e-3)) + field(3, 5, struct.pack("<f", 0.05))
    options = (field(1, 0, varint(1)) + string(2, tta) + field(3, 0, varint(22)) + field(4, 0, varint(3)) +
               field(5, 0, varint(1)) + field(6, 5, struct.pack("<f", 0.5)) + field(8, 0, varint(10)))
    write(requests, "all_options", string(1, "r1") + string(2, b"\x89PNG") + string(4, spec) + string(5, options))
    custom = string(1, "pcb4") + string(3, "industrial photo") + string(4, "good {}") + string(5, "bad {}")
    write(requests, "custom_spec", string(2, b"x") + string(4, custom) + string(5, field(7, 0, varint(1))))
    raw = string(1, bytes(12)) + field(2, 2, varint(2) + varint(2) + varint(3)) + field(3, 0, varint(0))
    write(requests, "raw_tensor", string(3, raw) + string(4, spec))


if __name__ == "__main__":
    main()
