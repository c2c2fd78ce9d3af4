"""An agent in Python on toolplane's gRPC API: the client is generated from `proto/`
with grpcio-tools when this script starts (nothing generated is checked in). It
registers nothing: it asks the control plane which tool fits a task, then invokes that
tool through its sidecar.

    TOOLPLANE_SERVER=127.0.0.1:50051 TOOLPLANE_SIDECAR=127.0.0.1:50061 \\
      AGENT_TOKEN=... python grpc_agent.py "convert 100 celsius to fahrenheit" '{"value":100,"from":"c","to":"f"}'

Prints one JSON object (the test reads it).
"""

import importlib
import json
import os
import pathlib
import sys
import tempfile

from google.protobuf import json_format, struct_pb2
from grpc_tools import protoc
import grpc

ROOT = pathlib.Path(__file__).resolve().parents[2]


def generate() -> str:
    out = tempfile.mkdtemp(prefix="toolplane-py-")
    include = str(pathlib.Path(protoc.__file__).parent / "_proto")
    protos = sorted(str(p.relative_to(ROOT / "proto")) for p in (ROOT / "proto/toolplane/v1").glob("*.proto"))
    code = protoc.main(["protoc", f"-I{ROOT / 'proto'}", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}", *protos])
    if code != 0:
        sys.exit(f"protoc failed with {code}")
    return out


def main() -> None:
    sys.path.insert(0, generate())
    selector_pb2 = importlib.import_module("toolplane.v1.selector_pb2")
    selector_grpc = importlib.import_module("toolplane.v1.selector_pb2_grpc")
    executor_pb2 = importlib.import_module("toolplane.v1.executor_pb2")
    executor_grpc = importlib.import_module("toolplane.v1.executor_pb2_grpc")

    task = sys.argv[1] if len(sys.argv) > 1 else "count the words of a text"
    params = json.loads(sys.argv[2]) if len(sys.argv) > 2 else {"text": "hello world"}
    auth = [("authorization", f"Bearer {os.environ['AGENT_TOKEN']}")]

    control_plane = grpc.insecure_channel(os.environ.get("TOOLPLANE_SERVER", "127.0.0.1:50051"))
    selection = selector_grpc.ToolSelectorStub(control_plane).SelectTool(
        selector_pb2.SelectToolRequest(task_description=task), metadata=auth, timeout=10
    )
    tool = selection.primary.tool

    parameters = struct_pb2.Struct()
    parameters.update(params)
    sidecar = grpc.insecure_channel(os.environ.get("TOOLPLANE_SIDECAR", "127.0.0.1:50061"))
    answer = executor_grpc.ExecutorStub(sidecar).Invoke(
        executor_pb2.InvokeRequest(tool_name=tool.name, parameters=parameters, task_id="python-example"),
        metadata=auth,
        timeout=10,
    )
    result = answer.result
    print(json.dumps({
        "tool": tool.name,
        "confidence": selection.confidence,
        "reasoning": selection.reasoning,
        "status_name": result.DESCRIPTOR.fields_by_name["status"].enum_type.values_by_number[result.status].name,
        "output": json_format.MessageToDict(result.output),
    }))


if __name__ == "__main__":
    main()
