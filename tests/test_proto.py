"""The wire contract: the committed compiled descriptor is the .proto, and every field is documented."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from google.protobuf import descriptor_pb2

from attnscope import proto


def test_committed_descriptor_matches_the_proto(tmp_path):
    pytest.importorskip("grpc_tools")  # in the dev extra; absent only on the bare GPU machine
    out = tmp_path / "fresh.desc"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"-I{proto.PROTO_FILE.parents[2]}",
            f"--descriptor_set_out={out}",
            "attnscope/v1/attnscope.proto",
        ],
        check=True,
    )
    fresh = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    committed = descriptor_pb2.FileDescriptorSet.FromString(proto.DESCRIPTOR_SET.read_bytes())
    assert fresh == committed, "proto/attnscope/v1/attnscope.desc is stale: run `make proto`"


def test_every_field_has_a_comment():
    """A field is documented by a comment on its line or the line above; a oneof's comment covers its members."""
    field = re.compile(r"^\s+(repeated\s+)?[A-Za-z0-9_.]+\s+\w+\s*=\s*\d+;")
    undocumented, in_oneof = [], False
    lines = proto.PROTO_FILE.read_text().splitlines()
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("oneof "):
            in_oneof = True
        elif stripped == "}":
            in_oneof = False
        elif (
            field.match(line)
            and not in_oneof
            and "//" not in line
            and not lines[i - 1].strip().startswith("//")
        ):
            undocumented.append(stripped)
    assert undocumented == []


def test_service_has_the_contracted_methods():
    methods = proto.SERVICE.methods_by_name
    assert proto.SERVICE.full_name == "attnscope.v1.AttentionService"
    extract = methods["Extract"]
    assert extract.input_type.full_name == "attnscope.v1.ExtractRequest"
    assert extract.output_type.full_name == "attnscope.v1.ExtractResponse"
    assert extract.server_streaming and not extract.client_streaming
    assert {"model", "text", "text_pair"} <= set(proto.ExtractRequest.DESCRIPTOR.fields_by_name)
    assert {f.name for f in proto.Tensor.DESCRIPTOR.fields} >= {"name", "dtype", "shape", "data"}
