import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SharingMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SHARING_MODE_UNSPECIFIED: _ClassVar[SharingMode]
    SHARING_MODE_MPS: _ClassVar[SharingMode]
    SHARING_MODE_TIMESLICE: _ClassVar[SharingMode]
    SHARING_MODE_EXCLUSIVE: _ClassVar[SharingMode]
SHARING_MODE_UNSPECIFIED: SharingMode
SHARING_MODE_MPS: SharingMode
SHARING_MODE_TIMESLICE: SharingMode
SHARING_MODE_EXCLUSIVE: SharingMode

class GPU(_message.Message):
    __slots__ = ("uuid", "index", "model", "memory_mib", "reserved_mib", "numa_node", "healthy")
    UUID_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    RESERVED_MIB_FIELD_NUMBER: _ClassVar[int]
    NUMA_NODE_FIELD_NUMBER: _ClassVar[int]
    HEALTHY_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    index: int
    model: str
    memory_mib: int
    reserved_mib: int
    numa_node: int
    healthy: bool
    def __init__(self, uuid: _Optional[str] = ..., index: _Optional[int] = ..., model: _Optional[str] = ..., memory_mib: _Optional[int] = ..., reserved_mib: _Optional[int] = ..., numa_node: _Optional[int] = ..., healthy: _Optional[bool] = ...) -> None: ...

class Inventory(_message.Message):
    __slots__ = ("node_name", "gpus", "sharing_mode", "plugin_version", "heartbeat_time")
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    SHARING_MODE_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TIME_FIELD_NUMBER: _ClassVar[int]
    node_name: str
    gpus: _containers.RepeatedCompositeFieldContainer[GPU]
    sharing_mode: SharingMode
    plugin_version: str
    heartbeat_time: _timestamp_pb2.Timestamp
    def __init__(self, node_name: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GPU, _Mapping]]] = ..., sharing_mode: _Optional[_Union[SharingMode, str]] = ..., plugin_version: _Optional[str] = ..., heartbeat_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class GPUShare(_message.Message):
    __slots__ = ("uuid", "milli", "memory_mib")
    UUID_FIELD_NUMBER: _ClassVar[int]
    MILLI_FIELD_NUMBER: _ClassVar[int]
    MEMORY_MIB_FIELD_NUMBER: _ClassVar[int]
    uuid: str
    milli: int
    memory_mib: int
    def __init__(self, uuid: _Optional[str] = ..., milli: _Optional[int] = ..., memory_mib: _Optional[int] = ...) -> None: ...

class ContainerAssignment(_message.Message):
    __slots__ = ("name", "gpus")
    NAME_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    name: str
    gpus: _containers.RepeatedCompositeFieldContainer[GPUShare]
    def __init__(self, name: _Optional[str] = ..., gpus: _Optional[_Iterable[_Union[GPUShare, _Mapping]]] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("pod_uid", "node_name", "containers", "decided_at")
    POD_UID_FIELD_NUMBER: _ClassVar[int]
    NODE_NAME_FIELD_NUMBER: _ClassVar[int]
    CONTAINERS_FIELD_NUMBER: _ClassVar[int]
    DECIDED_AT_FIELD_NUMBER: _ClassVar[int]
    pod_uid: str
    node_name: str
    containers: _containers.RepeatedCompositeFieldContainer[ContainerAssignment]
    decided_at: _timestamp_pb2.Timestamp
    def __init__(self, pod_uid: _Optional[str] = ..., node_name: _Optional[str] = ..., containers: _Optional[_Iterable[_Union[ContainerAssignment, _Mapping]]] = ..., decided_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
