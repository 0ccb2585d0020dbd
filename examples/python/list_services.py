#!/usr/bin/env python3
"""Lists a gRPC server's services over server reflection, as grpcurl's `list` does, and
resolves each one's descriptor as `describe` does. Uses grpc.reflection.v1 (or v1alpha with
--v1alpha); needs the modules of generate_stubs.sh on PYTHONPATH.

    PYTHONPATH=/tmp/anoclip-py python3 examples/python/list_services.py --target 127.0.0.1:50051
"""
import argparse
import sys

import grpc
from google.protobuf import descriptor_pb2

import reflection_pb2  # grpc.reflection.v1 messages, from generate_stubs.sh


def reflect(channel, requests, v1alpha):
    method = ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo" if v1alpha
              else "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    # The two versions share their messages, so the v1 classes serve for both.
    call = channel.stream_stream(method, request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                 response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
    return list(call(iter(requests), timeout=30))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="127.0.0.1:50051")
    parser.add_argument("--v1alpha", action="store_true", help="ask grpc.reflection.v1alpha instead of v1")
    args = parser.parse_args()
    with grpc.insecure_channel(args.target) as channel:
        listed = reflect(channel, [reflection_pb2.ServerReflectionRequest(list_services="")], args.v1alpha)[0]
        names = sorted(s.name for s in listed.list_services_response.service)
        answers = reflect(channel, [reflection_pb2.ServerReflectionRequest(file_containing_symbol=n) for n in names],
                          args.v1alpha)
    unresolved = 0
    for name, answer in zip(names, answers):
        if answer.HasField("error_response"):
            unresolved += 1
            print(f"{name}  (no descriptor: {answer.error_response.error_message})")
            continue
        methods = []
        for blob in answer.file_descriptor_response.file_descriptor_proto:
            proto = descriptor_pb2.FileDescriptorProto.FromString(blob)
            for service in proto.service:
                if f"{proto.package}.{service.name}" == name:
                    methods = [m.name for m in service.method]
        print(f"{name}  ({', '.join(methods)})")
    return 1 if unresolved else 0


if __name__ == "__main__":
    sys.exit(main())
