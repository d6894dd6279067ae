"""Pinned BPF maps and programs from Python with the stdlib only (raw ``bpf(2)`` via ctypes).

Problem: the agent updates the IPIP allowlist whenever nodes come and go, reads packet counters
for metrics, and checks which program is attached. ``bpftool`` costs about 1.7 ms a call (a
process each time); the syscall costs about 8 us, and needs no dependency.

Invariants: only objects pinned in a bpffs are opened (BPF_OBJ_GET); every fd is closed by
``close()`` / the context manager; key and value sizes are checked against the kernel's map
info so a layout mismatch with the C side is an error, not memory corruption.

Hazards: per-CPU maps return one value per *possible* CPU, each padded to 8 bytes; the count
comes from /sys/devices/system/cpu/possible, not os.cpu_count() (online CPUs only).
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_GET_FD_BY_ID = 13
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_ANY = 0

BPF_MAP_TYPE_PERCPU_HASH = 5
BPF_MAP_TYPE_PERCPU_ARRAY = 6
BPF_MAP_TYPE_LRU_PERCPU_HASH = 10
_PERCPU_TYPES = {BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_LRU_PERCPU_HASH}

_SYS_BPF = {
    "x86_64": 321,
    "aarch64": 280,
    "riscv64": 280,
    "armv7l": 386,
    "i686": 357,
    "ppc64le": 361,
    "s390x": 351,
}
_ATTR_SIZE = 128  # larger than every attr variant we use; the rest stays zero


@functools.cache
def _syscall() -> tuple[ctypes.CDLL, int]:
    machine = platform.machine()
    if machine not in _SYS_BPF:
        raise OSError(f"bpf(2) syscall number unknown for {machine}")
    return ctypes.CDLL(None, use_errno=True), _SYS_BPF[machine]


def bpf(cmd: int, attr: ctypes.Array[ctypes.c_char]) -> int:
    """Raw bpf(2); raises OSError with the kernel's errno."""
    libc, number = _syscall()
    ret = int(libc.syscall(number, cmd, ctypes.byref(attr), len(attr)))
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bpf(cmd={cmd}): {os.strerror(err)}")
    return ret


def attr(fmt: str, *values: int) -> ctypes.Array[ctypes.c_char]:
    """A zeroed ``union bpf_attr`` with ``values`` packed at its start (``fmt``: struct's)."""
    buf = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into(fmt, buf, 0, *values)
    return buf


def _addr(buf: ctypes.Array[ctypes.c_char] | None) -> int:
    return ctypes.addressof(buf) if buf is not None else 0


def obj_get(path: str | os.PathLike[str]) -> int:
    """An fd for a pinned map or program (the caller closes it)."""
    encoded = ctypes.create_string_buffer(os.fsencode(path))
    return bpf(BPF_OBJ_GET, attr("=QII", ctypes.addressof(encoded), 0, 0))


def _info(fd: int, size: int) -> bytes:
    info = ctypes.create_string_buffer(size)
    bpf(BPF_OBJ_GET_INFO_BY_FD, attr("=IIQ", fd, size, ctypes.addressof(info)))
    return info.raw


def info(fd: int, size: int) -> bytes:
    """``BPF_OBJ_GET_INFO_BY_FD``: the first ``size`` bytes of the object's info struct."""
    return _info(fd, size)


def obj_pin(fd: int, path: str | os.PathLike[str]) -> None:
    """Pin the object behind ``fd`` at ``path`` (in a bpffs); the pin holds a reference."""
    encoded = ctypes.create_string_buffer(os.fsencode(path))
    bpf(BPF_OBJ_PIN, attr("=QII", ctypes.addressof(encoded), fd, 0))


def prog_id_of(fd: int) -> int:
    """The kernel id of the program behind ``fd``."""
    # struct bpf_prog_info: __u32 type; __u32 id; ...
    return int(struct.unpack_from("=II", _info(fd, 64))[1])


def prog_id(path: str | os.PathLike[str]) -> int:
    """The kernel id of a pinned program (what ``tc filter show`` reports as ``id``)."""
    fd = obj_get(path)
    try:
        return prog_id_of(fd)
    finally:
        os.close(fd)


def prog_name(prog_id: int) -> str:
    """The name of the loaded program with kernel id ``prog_id`` ("" if it has none)."""
    fd = bpf(BPF_PROG_GET_FD_BY_ID, attr("=I", prog_id))
    try:
        # struct bpf_prog_info: ... char name[BPF_OBJ_NAME_LEN] at offset 64.
        return _info(fd, 96)[64:80].split(b"\0", 1)[0].decode(errors="replace")
    finally:
        os.close(fd)


@functools.cache
def possible_cpus() -> int:
    text = Path("/sys/devices/system/cpu/possible").read_text().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


@dataclass(frozen=True, slots=True)
class MapInfo:
    type: int
    id: int
    key_size: int
    value_size: int
    max_entries: int
    name: str


class PinnedMap:
    """A pinned BPF map. Keys and values are raw bytes in the C layout."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.fd = obj_get(self.path)
        # struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags, name[16]
        raw = _info(self.fd, 88)
        mtype, mid, key_size, value_size, max_entries, _flags = struct.unpack_from("=6I", raw)
        name = raw[24:40].split(b"\0", 1)[0].decode()
        self.info = MapInfo(mtype, mid, key_size, value_size, max_entries, name)
        self.percpu = mtype in _PERCPU_TYPES
        # What one lookup returns: per-CPU maps give every possible CPU's slot, 8-aligned.
        slot = (value_size + 7) & ~7
        self._value_len = slot * possible_cpus() if self.percpu else value_size

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> PinnedMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _key(self, key: bytes) -> ctypes.Array[ctypes.c_char]:
        if len(key) != self.info.key_size:
            raise ValueError(
                f"{self.info.name}: key is {len(key)} bytes, map wants {self.info.key_size}"
            )
        return ctypes.create_string_buffer(key, len(key))

    def lookup(self, key: bytes) -> bytes | None:
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(self._value_len)
        try:
            bpf(BPF_MAP_LOOKUP_ELEM, attr("=IIQQQ", self.fd, 0, _addr(kbuf), _addr(vbuf), 0))
        except OSError as exc:
            if exc.errno == 2:  # ENOENT
                return None
            raise
        return vbuf.raw

    def update(self, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
        if len(value) != self._value_len:
            raise ValueError(
                f"{self.info.name}: value is {len(value)} bytes, map wants {self._value_len}"
            )
        kbuf = self._key(key)
        vbuf = ctypes.create_string_buffer(value, len(value))
        bpf(BPF_MAP_UPDATE_ELEM, attr("=IIQQQ", self.fd, 0, _addr(kbuf), _addr(vbuf), flags))

    def delete(self, key: bytes) -> bool:
        """Remove ``key``; False if it was not there."""
        kbuf = self._key(key)
        try:
            bpf(BPF_MAP_DELETE_ELEM, attr("=IIQQQ", self.fd, 0, _addr(kbuf), 0, 0))
        except OSError as exc:
            if exc.errno == 2:
                return False
            raise
        return True

    def keys(self) -> Iterator[bytes]:
        """All keys (a snapshot walk: concurrent changes may be missed or repeated)."""
        current: ctypes.Array[ctypes.c_char] | None = None
        nxt = ctypes.create_string_buffer(self.info.key_size)
        while True:
            try:
                bpf(
                    BPF_MAP_GET_NEXT_KEY,
                    attr("=IIQQQ", self.fd, 0, _addr(current), _addr(nxt), 0),
                )
            except OSError as exc:
                if exc.errno == 2:  # ENOENT: past the last key
                    return
                raise
            key = nxt.raw
            yield key
            current = ctypes.create_string_buffer(key, len(key))

    def __iter__(self) -> Iterator[bytes]:
        return self.keys()

    def sum_percpu_u64(self, key: bytes) -> int:
        """Sum of a per-CPU u64 counter across CPUs (0 if absent)."""
        raw = self.lookup(key)
        if raw is None:
            return 0
        return sum(struct.unpack(f"={len(raw) // 8}Q", raw))
