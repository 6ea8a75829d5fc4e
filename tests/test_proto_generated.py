"""The generated protobuf modules must match their .proto sources and the upstream wire identity."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tensorai.proto import deviceplugin_v1beta1_pb2 as dp
from tensorai.proto import deviceplugin_v1beta1_pb2_grpc as dp_grpc
from tensorai.proto import podresources_v1_pb2 as pr

PROTO_DIR = Path(__file__).resolve().parent.parent / "proto"


def test_generated_modules_have_not_drifted_from_proto_sources(tmp_path: Path) -> None:
    if importlib.util.find_spec("grpc_tools") is None:
        pytest.skip("grpcio-tools (dev dependency) not installed")
    spec = importlib.util.spec_from_file_location("generate", PROTO_DIR / "generate.py")
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    fresh = generator.generate(tmp_path)
    assert fresh, "generator wrote nothing"
    for path in fresh:
        committed = PROTO_DIR / path.name
        assert committed.exists(), f"{path.name} is generated but not committed: run `make proto`"
        assert committed.read_text() == path.read_text(), f"{path.name} drifted: run `make proto`"


def test_device_plugin_api_keeps_upstream_package_and_method_paths() -> None:
    service = dp.DESCRIPTOR.services_by_name["DevicePlugin"]
    assert dp.DESCRIPTOR.package == "v1beta1"
    assert service.full_name == "v1beta1.DevicePlugin"
    assert sorted(m.name for m in service.methods) == [
        "Allocate", "GetDevicePluginOptions", "GetPreferredAllocation", "ListAndWatch", "PreStartContainer",
    ]
    assert dp.DESCRIPTOR.services_by_name["Registration"].full_name == "v1beta1.Registration"
    assert hasattr(dp_grpc, "add_DevicePluginServicer_to_server")


@pytest.mark.parametrize(
    ("message", "field", "number"),
    [
        (dp.RegisterRequest, "resource_name", 3),
        (dp.RegisterRequest, "options", 4),
        (dp.Device, "ID", 1),
        (dp.Device, "topology", 3),
        (dp.ContainerPreferredAllocationRequest, "available_deviceIDs", 1),
        (dp.ContainerPreferredAllocationRequest, "must_include_deviceIDs", 2),
        (dp.ContainerPreferredAllocationRequest, "allocation_size", 3),
        (dp.ContainerPreferredAllocationResponse, "deviceIDs", 1),
        (dp.ContainerAllocateRequest, "devices_ids", 1),
        (dp.ContainerAllocateResponse, "annotations", 4),
        (dp.ContainerAllocateResponse, "cdi_devices", 5),
        (dp.DeviceSpec, "permissions", 3),
        (pr.ContainerDevices, "device_ids", 2),
        (pr.PodResources, "memory", 5),
        (pr.ContainerResources, "dynamic_resources", 5),
        (pr.ClaimResource, "share_id", 5),
        (pr.GetPodResourcesRequest, "pod_namespace", 2),
    ],
)
def test_field_numbers_match_upstream(message: type, field: str, number: int) -> None:
    assert message.DESCRIPTOR.fields_by_name[field].number == number


def test_pod_resources_api_keeps_upstream_service_name() -> None:
    assert pr.DESCRIPTOR.services_by_name["PodResourcesLister"].full_name == "v1.PodResourcesLister"


def test_wire_bytes_of_a_register_request_are_stable() -> None:
    request = dp.RegisterRequest(
        version="v1beta1", endpoint="tensor-ai-vgpu.sock", resource_name="tensor.ai/vgpu-milli",
        options=dp.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    # Hand-encoded from the upstream field numbers: tag (field << 3 | wire type 2), length, bytes.
    expected = (
        b"\x0a\x07v1beta1" + b"\x12\x13tensor-ai-vgpu.sock"
        + b"\x1a\x14tensor.ai/vgpu-milli" + b"\x22\x02\x10\x01"
    )
    assert request.SerializeToString() == expected
