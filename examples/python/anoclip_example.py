#!/usr/bin/env python3
"""Calls anoclip-server from Python: one Detect, then a streaming Inspect over several images.

Needs the generated modules (generate_stubs.sh OUT_DIR) on PYTHONPATH and Debian's
python3-grpcio and python3-protobuf:

    examples/python/generate_stubs.sh /tmp/anoclip-py
    PYTHONPATH=/tmp/anoclip-py python3 examples/python/anoclip_example.py \
        --target 127.0.0.1:50051 --class bottle --heatmap-out heatmap.png a.png b.png
"""
import argparse
import array
import sys
import uuid

import grpc

from anoclip.v1 import anoclip_pb2, anoclip_pb2_grpc

CODE_NAMES = {code.value[0]: code.name for code in grpc.StatusCode}  # google.rpc.Code -> name


def detect_request(path, class_name, heatmap_format, request_id=""):
    with open(path, "rb") as f:
        image = f.read()
    return anoclip_pb2.DetectRequest(
        request_id=request_id or path,
        image_bytes=image,
        class_spec=anoclip_pb2.ClassSpec(name=class_name),
        options=anoclip_pb2.DetectOptions(heatmap_format=heatmap_format),
    )


def decode_float_heatmap(heatmap):
    """A HEATMAP_FORMAT_FLOAT32 heatmap as rows of floats (little-endian float32, row-major)."""
    values = array.array("f")
    values.frombytes(heatmap.data)
    if sys.byteorder != "little":
        values.byteswap()
    if len(values) != heatmap.width * heatmap.height:
        raise ValueError(f"{len(values)} floats for a {heatmap.width}x{heatmap.height} heatmap")
    return [values[r * heatmap.width:(r + 1) * heatmap.width] for r in range(heatmap.height)]


def detect(stub, path, class_name, heatmap_out, metadata):
    """One unary Detect with a float heatmap; writes a grayscale PNG heatmap too if asked."""
    response, call = stub.Detect.with_call(
        detect_request(path, class_name, anoclip_pb2.HEATMAP_FORMAT_FLOAT32), metadata=metadata, timeout=60)
    rows = decode_float_heatmap(response.heatmap)
    peak = max(max(row) for row in rows)
    trailing = dict(call.trailing_metadata() or ())
    print(f"detect {path}: image_score={response.image_score:.4f} max_pixel_score={response.max_pixel_score:.4f} "
          f"heatmap={response.heatmap.width}x{response.heatmap.height} heatmap_peak={peak:.4f} "
          f"regions={len(response.regions)} request_id={trailing.get('x-request-id', '')}")
    if heatmap_out:
        png = stub.Detect(detect_request(path, class_name, anoclip_pb2.HEATMAP_FORMAT_PNG), metadata=metadata,
                          timeout=60)
        with open(heatmap_out, "wb") as f:
            f.write(png.heatmap.data)
        print(f"heatmap written: {heatmap_out} ({len(png.heatmap.data)} bytes of PNG)")
    return response


def inspect(stub, paths, class_name, metadata):
    """Sends every image over one Inspect stream; answers arrive in completion order."""
    requests = (anoclip_pb2.InspectRequest(detect=detect_request(p, class_name,
                                                                 anoclip_pb2.HEATMAP_FORMAT_UNSPECIFIED))
                for p in paths)
    answers = {}
    for answer in stub.Inspect(requests, metadata=metadata, timeout=60 * (1 + len(paths))):
        if answer.HasField("error"):
            print(f"inspect {answer.request_id}: {CODE_NAMES.get(answer.error.code, answer.error.code)}: "
                  f"{answer.error.message}")
        else:
            print(f"inspect {answer.request_id}: image_score={answer.detection.image_score:.4f}")
        answers[answer.request_id] = answer
    return answers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051", help="host:port of anoclip-server")
    parser.add_argument("--class", dest="class_name", required=True, help="product class, e.g. bottle")
    parser.add_argument("--heatmap-out", help="also write the first image's heatmap PNG here")
    parser.add_argument("--request-id", help="x-request-id to send (default: a new UUID)")
    parser.add_argument("images", nargs="+", help="PNG, JPEG, BMP, TIFF or WebP files")
    args = parser.parse_args()

    metadata = (("x-request-id", args.request_id or str(uuid.uuid4())),)
    with grpc.insecure_channel(args.target) as channel:
        stub = anoclip_pb2_grpc.AnomalyDetectionServiceStub(channel)
        detect(stub, args.images[0], args.class_name, args.heatmap_out, metadata)
        answers = inspect(stub, args.images, args.class_name, metadata)
    failed = sum(1 for a in answers.values() if a.HasField("error"))
    print(f"{len(answers)} answered on the stream, {failed} failed")
    return 0 if failed == 0 and len(answers) == len(args.images) else 1


if __name__ == "__main__":
    sys.exit(main())
