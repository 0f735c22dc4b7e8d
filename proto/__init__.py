"""The attnscope.v1 message classes, built at import from the compiled form of
`attnscope/v1/attnscope.proto` (the single source of truth for the wire).

Why not protoc's generated ``_pb2`` modules: generated code pins the protobuf runtime it may run
with (protobuf 5.26+ checks the generator's version at import), and attnscope must import under
both the GPU machine's protobuf and the newest on PyPI. A FileDescriptorSet is plain data that
every protobuf 4.x-7.x runtime loads. `make proto` recompiles it with grpcio-tools, and
tests/test_proto.py fails when it no longer matches the .proto.

Messages are registered in protobuf's default descriptor pool, so gRPC server reflection serves
them like generated ones.
"""

from __future__ import annotations

from pathlib import Path

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

PROTO_FILE = Path(__file__).parent / "attnscope" / "v1" / "attnscope.proto"
DESCRIPTOR_SET = PROTO_FILE.with_suffix(".desc")
PACKAGE = "attnscope.v1"
SERVICE_NAME = f"{PACKAGE}.AttentionService"


def _load_file():
    pool = descriptor_pool.Default()
    try:
        return pool.FindFileByName("attnscope/v1/attnscope.proto")
    except KeyError:
        pass
    files = descriptor_pb2.FileDescriptorSet.FromString(DESCRIPTOR_SET.read_bytes())
    for proto in files.file:
        pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName("attnscope/v1/attnscope.proto")


def _message_class(descriptor):
    if hasattr(message_factory, "GetMessageClass"):  # protobuf >= 4.21
        return message_factory.GetMessageClass(descriptor)
    return message_factory.MessageFactory().GetPrototype(descriptor)  # pragma: no cover


FILE = _load_file()
SERVICE = FILE.services_by_name["AttentionService"]

Tensor = _message_class(FILE.message_types_by_name["Tensor"])
Range = _message_class(FILE.message_types_by_name["Range"])
Selection = _message_class(FILE.message_types_by_name["Selection"])
PooledView = _message_class(FILE.message_types_by_name["PooledView"])
HeadStatsView = _message_class(FILE.message_types_by_name["HeadStatsView"])
ReceivedView = _message_class(FILE.message_types_by_name["ReceivedView"])
TileView = _message_class(FILE.message_types_by_name["TileView"])
TopkView = _message_class(FILE.message_types_by_name["TopkView"])
NeuronView = _message_class(FILE.message_types_by_name["NeuronView"])
RolloutView = _message_class(FILE.message_types_by_name["RolloutView"])
SpanPooledView = _message_class(FILE.message_types_by_name["SpanPooledView"])
HeadClassesView = _message_class(FILE.message_types_by_name["HeadClassesView"])
SinksView = _message_class(FILE.message_types_by_name["SinksView"])
Renormalize = _message_class(FILE.message_types_by_name["Renormalize"])
AttentionFromView = _message_class(FILE.message_types_by_name["AttentionFromView"])
RetrievalView = _message_class(FILE.message_types_by_name["RetrievalView"])
QueryFocusView = _message_class(FILE.message_types_by_name["QueryFocusView"])
Generation = _message_class(FILE.message_types_by_name["Generation"])
Progress = _message_class(FILE.message_types_by_name["Progress"])
DeviceMemory = _message_class(FILE.message_types_by_name["DeviceMemory"])
ViewRequest = _message_class(FILE.message_types_by_name["ViewRequest"])
ExtractRequest = _message_class(FILE.message_types_by_name["ExtractRequest"])
TraceInfo = _message_class(FILE.message_types_by_name["TraceInfo"])
ExtractResponse = _message_class(FILE.message_types_by_name["ExtractResponse"])
CreateTraceRequest = _message_class(FILE.message_types_by_name["CreateTraceRequest"])
GetViewsRequest = _message_class(FILE.message_types_by_name["GetViewsRequest"])
DeleteTraceRequest = _message_class(FILE.message_types_by_name["DeleteTraceRequest"])
DeleteTraceResponse = _message_class(FILE.message_types_by_name["DeleteTraceResponse"])
ListModelsRequest = _message_class(FILE.message_types_by_name["ListModelsRequest"])
ModelInfo = _message_class(FILE.message_types_by_name["ModelInfo"])
ListModelsResponse = _message_class(FILE.message_types_by_name["ListModelsResponse"])
KindInfo = _message_class(FILE.message_types_by_name["KindInfo"])
PatchGrid = _message_class(FILE.message_types_by_name["PatchGrid"])
ViewManifest = _message_class(FILE.message_types_by_name["ViewManifest"])
ViewOutput = _message_class(FILE.message_types_by_name["ViewOutput"])
GetServerInfoRequest = _message_class(FILE.message_types_by_name["GetServerInfoRequest"])
Limits = _message_class(FILE.message_types_by_name["Limits"])
ViewerDefaults = _message_class(FILE.message_types_by_name["ViewerDefaults"])
HeadStatInfo = _message_class(FILE.message_types_by_name["HeadStatInfo"])
ServerInfo = _message_class(FILE.message_types_by_name["ServerInfo"])


def _enum(name: str) -> dict[str, int]:
    return {v: value.number for v, value in FILE.enum_types_by_name[name].values_by_name.items()}


#: Enum numbers by value name: DType["FLOAT32"] -> 1, Kind["KIND_CROSS"] -> 3, Notable["NOTABLE_LOW"] -> 2,
#: HeadClass["HEAD_CLASS_INDUCTION"] -> 2.
DType = _enum("DType")
Kind = _enum("Kind")
Notable = _enum("Notable")
HeadClass = _enum("HeadClass")

#: HeadClass numbers by the Python API's labels ("previous-token" -> HEAD_CLASS_PREVIOUS_TOKEN), and back.
HEAD_CLASS_OF_LABEL = {
    name.removeprefix("HEAD_CLASS_").lower().replace("_", "-"): number
    for name, number in HeadClass.items()
    if number
}
LABEL_OF_HEAD_CLASS = {number: label for label, number in HEAD_CLASS_OF_LABEL.items()}

#: Kind numbers by the Python API's kind names ("encoder" -> KIND_ENCODER, None -> KIND_SELF), and back.
KIND_OF_NAME = {
    None: Kind["KIND_SELF"],
    "encoder": Kind["KIND_ENCODER"],
    "decoder": Kind["KIND_DECODER"],
    "cross": Kind["KIND_CROSS"],
}
NAME_OF_KIND = {number: name for name, number in KIND_OF_NAME.items()}


def method_path(name: str) -> str:
    """The HTTP/2 path of an RPC, e.g. "/attnscope.v1.AttentionService/Extract"."""
    if name not in SERVICE.methods_by_name:
        raise ValueError(f"AttentionService has no method {name!r}")
    return f"/{SERVICE_NAME}/{name}"
