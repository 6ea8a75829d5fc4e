"""Kubelet's candidate device IDs read straight from GetPreferredAllocation's wire bytes.

Why: kubelet sends every free ID of the node (8,000 on 8 GPUs) in each GetPreferredAllocation.
Making each a Python string, hashing them into a set and splitting that set by GPU cost ~1.5 ms per
call on a 2-vCPU VM - almost all of the plugin's own share of the call. But the IDs are ours: all of
one length, so protobuf lays `available_deviceIDs` out as fixed-size records (tag, length, ID), and
whole columns of that block can be classified and checked with C-speed bytes operations (strided
slices, translate, one join, one compare, count) without one Python object per ID.

`WireLayout.read` is exact where it answers and answers None whenever the bytes are not exactly that
layout (another field order, IDs of several lengths, any ID we never advertised); the caller then
takes the per-ID path (`SliceTable.available`), which names what was wrong. Duplicate IDs are found
when a GPU's IDs are listed (`AvailableIds.ids_on`), which happens for every GPU the answer is taken from
or a must_include ID names; a duplicate on another GPU only changes how free that GPU looks, and
never puts a duplicate or unknown ID into an answer. kubelet's candidate set never has duplicates.
"""

from __future__ import annotations

import operator
from collections import Counter
from itertools import compress

from google.protobuf.message import DecodeError

from tensorai.deviceplugin.slices import AvailableIds, SliceError, SliceTable
from tensorai.proto import contract
from tensorai.proto import deviceplugin_v1beta1_pb2 as dp

FIELD_1_BYTES = 0x0A  # tag of field 1, length-delimited: container_requests, and available_deviceIDs inside
LANE = 11  # per GPU, 11 byte values in the keyed column: its 10 digits and a record end
MAX_GPUS = 256 // LANE  # 23: GPU codes times LANE stay byte-sized
_DIGIT_VALUE = bytes(0x30) + bytes(range(10)) + bytes(256 - 0x3A)  # b"0".."9" -> 0..9
_LANE_START = bytes(min(code * LANE, 255) for code in range(256))
_RECORD_END = bytes(min(code * LANE + LANE - 1, 255) for code in range(256))


def _slice_key(digits: bytes) -> int:
    """The keyed column's value for one slice's last three digits, read back as GPU 0's (native order)."""
    return memoryview(bytes(d - 0x30 for d in digits) + bytes([LANE - 1])).cast("I")[0]


_SLICE_OF_KEY = {_slice_key(b"%03d" % index): index for index in range(1000)}  # "0123" is read as its "123"


class WireRequest:
    """A PreferredAllocationRequest as gRPC hands it over (the deserializer): its wire bytes, parsed
    whole only when the IDs cannot be read from them (`message`; DecodeError for malformed bytes)."""

    __slots__ = ("_message", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._message: dp.PreferredAllocationRequest | None = None

    @property
    def message(self) -> dp.PreferredAllocationRequest:
        if self._message is None:
            self._message = dp.PreferredAllocationRequest.FromString(self.raw)
        return self._message


def container_spans(raw: bytes) -> list[tuple[int, int]] | None:
    """Byte ranges of the ContainerPreferredAllocationRequests; None if the message holds anything else."""
    spans: list[tuple[int, int]] = []
    pos = 0
    while pos < len(raw):
        if raw[pos] != FIELD_1_BYTES:
            return None
        length, pos = _varint(raw, pos + 1)
        if length is None or pos + length > len(raw):
            return None
        spans.append((pos, pos + length))
        pos += length
    return spans


def _varint(raw: bytes, pos: int) -> tuple[int | None, int]:
    value = shift = 0
    while pos < len(raw) and shift < 35:
        byte = raw[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None, pos


class WireLayout:
    """How one SliceTable's IDs look as protobuf records, and the byte tables that read them.

    A record is tag, length, "<uuid>::" and four slice digits. Each record's GPU is read from one or
    two uuid characters that tell this node's GPUs apart (`_classify`); then the whole block is
    compared with the records those GPUs' uuids would give, digits copied in - so every byte of every
    ID is checked, and a misread GPU can only fail that comparison.
    """

    def __init__(self, table: SliceTable, uuid_bytes: list[bytes], offsets: tuple[int, ...],
                 translations: tuple[bytes, ...]) -> None:
        self.table = table
        self._uuids = table.uuids
        self._offsets = offsets  # record offsets of the one or two telling characters
        self._translations = translations  # byte tables: character(s) -> GPU code (len(uuids) = none)
        self.id_len = len(uuid_bytes[0]) + 2 + 4
        self.record = self.id_len + 2
        never = b"\xff" * self.record  # starts with a byte no record starts with
        header = bytes([FIELD_1_BYTES, self.id_len])
        self._templates = (*(header + uuid + b"::" + b"\0" * 4 for uuid in uuid_bytes), never)

    @classmethod
    def for_table(cls, table: SliceTable) -> WireLayout | None:
        """The layout, or None where IDs differ in length or the GPUs cannot be told apart by two characters."""
        uuids = [uuid.encode() for uuid in table.uuids]
        if not uuids or len(uuids) > MAX_GPUS or len({len(u) for u in uuids}) != 1:
            return None
        if not all(uuid.isascii() for uuid in uuids) or len(uuids[0]) + 6 > 127:  # one-byte length prefix
            return None
        if any(device != f"{uuid}::{index:04d}" for uuid in table.uuids
               for index, device in enumerate(table.device_ids(uuid))):
            return None  # not the "<uuid>::0000".."<uuid>::0999" the byte tables below assume
        none = len(uuids)
        for a in range(len(uuids[0])):
            if len({u[a] for u in uuids}) == len(uuids):
                table_a = bytearray([none]) * 256
                for code, uuid in enumerate(uuids):
                    table_a[uuid[a]] = code
                return cls(table, uuids, (2 + a,), (bytes(table_a),))
        for a in range(len(uuids[0])):
            for b in range(a + 1, len(uuids[0])):
                if len({(u[a], u[b]) for u in uuids}) != len(uuids):
                    continue
                first = sorted({u[a] for u in uuids})
                second = sorted({u[b] for u in uuids})
                if len(first) * len(second) > 256:
                    continue
                table_a = bytearray(256)  # characters no uuid has there read as 0: the comparison catches them
                table_b = bytearray(256)
                for index, char in enumerate(first):
                    table_a[char] = index * len(second)
                for index, char in enumerate(second):
                    table_b[char] = index
                combined = bytearray([none]) * 256
                for code, uuid in enumerate(uuids):
                    combined[first.index(uuid[a]) * len(second) + second.index(uuid[b])] = code
                return cls(table, uuids, (2 + a, 2 + b), (bytes(table_a), bytes(table_b), bytes(combined)))
        return None

    def _classify(self, raw: bytes, start: int, end: int, count: int) -> bytes:
        """One byte per record of raw[start:end]: the GPU code its telling characters name."""
        step = self.record
        if len(self._offsets) == 1:
            return raw[start + self._offsets[0]:end:step].translate(self._translations[0])
        high = raw[start + self._offsets[0]:end:step].translate(self._translations[0])
        low = raw[start + self._offsets[1]:end:step].translate(self._translations[1])
        # byte-wise sum without carries: high is a multiple of len(second), low below it, their sum below 256
        total = int.from_bytes(high, "big") + int.from_bytes(low, "big")
        return total.to_bytes(count, "big").translate(self._translations[2])

    def read_container(
        self, raw: bytes, start: int, end: int
    ) -> tuple[AvailableIds, dp.ContainerPreferredAllocationRequest] | None:
        """A container message raw[start:end] as its IDs and the rest of it, or None (then parse it whole).

        The IDs are the records at its start (kubelet writes field 1 first); the bytes after them are
        parsed as usual and must hold no further IDs.
        """
        heads = raw[start:end:self.record]
        count = len(heads) - len(heads.lstrip(bytes([FIELD_1_BYTES])))  # a run of record starts
        available = self.read(raw, start, end, count)
        if available is None:
            return None
        try:
            rest = dp.ContainerPreferredAllocationRequest.FromString(raw[start + self.record * count:end])
        except DecodeError:
            return None
        return None if rest.available_deviceIDs else (available, rest)

    def read(self, raw: bytes, start: int, end: int, count: int) -> AvailableIds | None:
        """The `count` available IDs at the start of the container message raw[start:end]; None if not laid out so."""
        size = self.record * count
        if count == 0 or end - start < size:
            return None
        end = start + size  # columns are strided slices of raw itself: no copy of the 8,000-ID block
        codes = self._classify(raw, start, end, count)
        picked = operator.itemgetter(*codes)(self._templates)  # measured the fastest gather
        expected = bytearray().join(picked) if count > 1 else bytearray(picked)
        step = self.record
        digits = [raw[start + step - 4 + k:end:step] for k in range(4)]
        for k, column in enumerate(digits):
            expected[step - 4 + k::step] = column
        if expected != memoryview(raw)[start:end]:
            return None
        if digits[0] != b"0" * count or not all(column.isdigit() for column in digits[1:]):
            return None  # slices are 0000..0999
        # Per record four bytes in its GPU's own range of LANE values: three digits, then a record end,
        # so that one GPU's records are what is left after deleting every other GPU's byte values.
        keyed = bytearray(4 * count)
        lane_start = int.from_bytes(codes.translate(_LANE_START), "big")
        for k in (1, 2, 3):  # byte-wise sums without carries: lane start + digit stays below 256
            value = lane_start + int.from_bytes(digits[k].translate(_DIGIT_VALUE), "big")
            keyed[k - 1::4] = value.to_bytes(count, "big")
        keyed[3::4] = codes.translate(_RECORD_END)
        counts = {uuid: codes.count(code) for code, uuid in enumerate(self._uuids)}
        return AvailableIds(self.table, counts, _Lister(self.table, self._uuids, bytes(keyed)).free_on)


class _Lister:
    """Lists one GPU's free IDs from the keyed column, finding duplicates on that GPU."""

    def __init__(self, table: SliceTable, uuids: list[str], keyed: bytes) -> None:
        self._table = table
        self._code = {uuid: code for code, uuid in enumerate(uuids)}
        self._keyed = keyed

    def free_on(self, uuid: str) -> list[str]:
        code = self._code[uuid]
        mine = self._keyed.translate(None, _OTHER_LANES[code])  # this GPU's records only
        slices = list(map(_SLICE_OF_KEY.__getitem__, memoryview(mine.translate(_TO_GPU_ZERO[code])).cast("I")))
        present = bytearray(contract.MILLI_PER_GPU)
        for index in slices:  # at most 1000: the one per-ID loop left, and only on GPUs an answer uses
            present[index] = 1
        ids = self._table.device_ids(uuid)
        if present.count(1) != len(slices):
            repeated, _ = Counter(slices).most_common(1)[0]
            raise SliceError(f"available_deviceIDs: device ID {ids[repeated]!r} appears twice")
        return list(compress(ids, present))


_OTHER_LANES = tuple(bytes(range(256)).translate(None, bytes(range(code * LANE, code * LANE + LANE)))
                     for code in range(MAX_GPUS))
# per GPU code: its LANE byte values -> GPU 0's, so one table of slice keys serves every GPU
_TO_GPU_ZERO = tuple(bytes((value - code * LANE) if code * LANE <= value < code * LANE + LANE else value
                           for value in range(256)) for code in range(MAX_GPUS))
