#!/usr/bin/env python3
"""A protoc plugin that runs grpcio-tools' built-in grpc_python generator.

buf can proxy only protoc's own generators (python, pyi, ...), and grpcio-tools ships no
`protoc-gen-grpc_python` executable: the generator lives inside `grpc_tools.protoc`. This plugin
receives buf's CodeGeneratorRequest, hands the same descriptors to grpc_tools' protoc, and returns
what it wrote.
"""

from __future__ import annotations

import pathlib
import sys
import tempfile

from google.protobuf import descriptor_pb2
from google.protobuf.compiler import plugin_pb2
from grpc_tools import protoc


def main() -> int:
    request = plugin_pb2.CodeGeneratorRequest.FromString(sys.stdin.buffer.read())
    response = plugin_pb2.CodeGeneratorResponse(
        supported_features=plugin_pb2.CodeGeneratorResponse.FEATURE_PROTO3_OPTIONAL
    )
    with tempfile.TemporaryDirectory() as workdir:
        descriptor_set = pathlib.Path(workdir, "input.binpb")
        descriptor_set.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=request.proto_file).SerializeToString()
        )
        out = pathlib.Path(workdir, "out")
        out.mkdir()
        options = f"{request.parameter}:" if request.parameter else ""
        status = protoc.main(
            [
                "protoc",
                f"--descriptor_set_in={descriptor_set}",
                f"--grpc_python_out={options}{out}",
                *request.file_to_generate,
            ]
        )
        if status != 0:
            response.error = f"grpc_tools.protoc exited with {status}"
        else:
            for path in sorted(out.rglob("*")):
                if path.is_file():
                    response.file.add(
                        name=path.relative_to(out).as_posix(), content=path.read_text()
                    )
    sys.stdout.buffer.write(response.SerializeToString())
    return 0


if __name__ == "__main__":
    sys.exit(main())
