"""The registry routines a driver uses to read its service key: ZwOpenKey,
ZwQueryValueKey, ZwClose and RtlQueryRegistryValues, over the service store.

    oa = InitializeObjectAttributes(RegistryPath + "\\Parameters", OBJ_CASE_INSENSITIVE | OBJ_KERNEL_HANDLE, None, None)
    status, hKey = ZwOpenKey(KEY_READ, oa)
    status, info, length = ZwQueryValueKey(hKey, "Interval", KeyValuePartialInformation, None, 64)
    interval = struct.unpack("<I", info.Data)[0]
    ZwClose(hKey)

A key handle is an ordinary handle: with OBJ_KERNEL_HANDLE it lives in the
system process's table (its value has the kernel-handle bits set, as on NT);
without, in the table of the process whose context the driver runs in.  A
driver that unloads with key handles still open has leaked them: they are
closed and named in its unload report (a hook of the I/O manager's unload).
"""

from __future__ import annotations

import struct

from ringzero.kernel import system
from ringzero.kernel.context import current
from ringzero.kernel.io import driver as iodriver
from ringzero.kernel.ob.handles import HandleError, release_entry
from ringzero.kernel.ob.object import ObjectHeader
from ringzero.kernel.svc import store as values
from ringzero.nt import registry as reg
from ringzero.nt import status as st

KERNEL_HANDLE_BITS = 0xFFFFFFFF80000000
SERVICES_KEY = "\\Registry\\Machine\\System\\CurrentControlSet\\Services"
_RELATIVE_ROOTS = {
    reg.RTL_REGISTRY_SERVICES: SERVICES_KEY,
    reg.RTL_REGISTRY_CONTROL: "\\Registry\\Machine\\System\\CurrentControlSet\\Control",
    reg.RTL_REGISTRY_WINDOWS_NT: "\\Registry\\Machine\\Software\\Microsoft\\Windows NT\\CurrentVersion",
    reg.RTL_REGISTRY_DEVICEMAP: "\\Registry\\Machine\\Hardware\\DeviceMap",
}


class OBJECT_ATTRIBUTES:
    __slots__ = ("Length", "RootDirectory", "ObjectName", "Attributes", "SecurityDescriptor",
                 "SecurityQualityOfService")

    def __init__(self, ObjectName=None, Attributes: int = 0, RootDirectory=None, SecurityDescriptor=None):
        self.Length = 48
        self.ObjectName = ObjectName
        self.Attributes = Attributes
        self.RootDirectory = RootDirectory
        self.SecurityDescriptor = SecurityDescriptor
        self.SecurityQualityOfService = None


def InitializeObjectAttributes(*args) -> OBJECT_ATTRIBUTES:
    """``oa = InitializeObjectAttributes(ObjectName, Attributes, RootDirectory, SecurityDescriptor)``;
    the C form, with the structure to fill first, fills and returns it."""
    if len(args) == 5:
        oa, name, attributes, root, sd = args
        oa = oa if isinstance(oa, OBJECT_ATTRIBUTES) else OBJECT_ATTRIBUTES()
        oa.ObjectName, oa.Attributes, oa.RootDirectory, oa.SecurityDescriptor = name, attributes, root, sd
        return oa
    return OBJECT_ATTRIBUTES(*args)


class KEY_OBJECT(ObjectHeader):
    """An open key: its path in the store, and the driver that opened it."""

    type_name = "Key"

    def __init__(self, path: str, driver):
        self.path = path
        self.driver = driver

    def object_name(self) -> str:
        return self.path


class KEY_VALUE_INFORMATION:
    """KEY_VALUE_BASIC/FULL/PARTIAL_INFORMATION: the fields of the class asked
    for are set (TitleIndex, Type, DataLength, Data, NameLength, Name, DataOffset)."""

    def __init__(self, **fields):
        self.__dict__.update(fields)


def _store():
    scm = system.get().scm
    if scm is None:
        raise HandleError(st.STATUS_OBJECT_NAME_NOT_FOUND, "there is no service database")
    return scm.store


def _table_of(handle: int):
    if handle & KERNEL_HANDLE_BITS == KERNEL_HANDLE_BITS:
        return system.get().system_process.handles, handle & ~KERNEL_HANDLE_BITS
    proc = current.process or system.get().system_process
    return proc.handles, handle


def _key(KeyHandle) -> KEY_OBJECT:
    table, h = _table_of(int(KeyHandle or 0))
    obj = table.get(h).obj
    if not isinstance(obj, KEY_OBJECT):
        raise HandleError(st.STATUS_OBJECT_TYPE_MISMATCH, f"handle {int(KeyHandle):#x} is a {obj.type_name}, not a Key")
    return obj


def _full_path(oa: OBJECT_ATTRIBUTES) -> str:
    name = str(oa.ObjectName or "")
    if oa.RootDirectory:
        return _key(oa.RootDirectory).path + ("\\" + name.lstrip("\\") if name else "")
    if not name.startswith("\\"):
        raise HandleError(st.STATUS_OBJECT_PATH_SYNTAX_BAD, f"{name!r} is not an absolute key name")
    return name.rstrip("\\")


def ZwOpenKey(DesiredAccess: int, ObjectAttributes: OBJECT_ATTRIBUTES):
    """(status, KeyHandle)."""
    try:
        path = _store().key_path(_full_path(ObjectAttributes))
    except HandleError as e:
        return e.status, None
    if path is None:
        return st.STATUS_OBJECT_NAME_NOT_FOUND, None
    key = KEY_OBJECT(path, current.driver)
    if ObjectAttributes.Attributes & reg.OBJ_KERNEL_HANDLE:
        h = system.get().system_process.handles.insert(key, DesiredAccess) | KERNEL_HANDLE_BITS
    else:
        h = (current.process or system.get().system_process).handles.insert(key, DesiredAccess)
    return st.STATUS_SUCCESS, h


def ZwClose(Handle) -> int:
    """Close a handle of the current process, or a kernel handle."""
    table, h = _table_of(int(Handle or 0))
    try:
        entry = table.remove(h)
    except HandleError as e:
        return e.status
    release_entry(entry, current.process)
    return st.STATUS_SUCCESS


def _value_info(info_class: int, name: str, value_type: int, data: bytes):
    """(structure bytes, KEY_VALUE_INFORMATION, size of the fixed part) for one class."""
    wname = name.encode("utf-16-le")
    if info_class == reg.KeyValueBasicInformation:
        raw = struct.pack("<III", 0, value_type, len(wname)) + wname
        return raw, KEY_VALUE_INFORMATION(TitleIndex=0, Type=value_type, NameLength=len(wname), Name=name), 12
    if info_class == reg.KeyValuePartialInformation:
        raw = struct.pack("<III", 0, value_type, len(data)) + data
        return raw, KEY_VALUE_INFORMATION(TitleIndex=0, Type=value_type, DataLength=len(data), Data=data), 12
    if info_class == reg.KeyValueFullInformation:
        offset = (20 + len(wname) + 7) & ~7
        raw = struct.pack("<IIIII", 0, value_type, offset, len(data), len(wname)) + wname
        raw = raw.ljust(offset, b"\0") + data
        return raw, KEY_VALUE_INFORMATION(TitleIndex=0, Type=value_type, DataOffset=offset, DataLength=len(data),
                                          NameLength=len(wname), Name=name, Data=data), 20
    raise ValueError(info_class)


def ZwQueryValueKey(KeyHandle, ValueName, KeyValueInformationClass: int, KeyValueInformation, Length: int):
    """(status, information, ResultLength).

    `KeyValueInformation` may be None, or a writable buffer (a pool block)
    that receives the structure's bytes as C would; either way the structure
    comes back parsed.  As NT: a Length smaller than the fixed part gives
    STATUS_BUFFER_TOO_SMALL, one smaller than the whole STATUS_BUFFER_OVERFLOW
    with the fixed part filled in; ResultLength is always the size needed."""
    try:
        key = _key(KeyHandle)
    except HandleError as e:
        return e.status, None, 0
    found = _store().get_value(key.path, str(ValueName or ""))
    if found is None:
        return st.STATUS_OBJECT_NAME_NOT_FOUND, None, 0
    name, value_type, data = found
    try:
        raw, info, fixed = _value_info(KeyValueInformationClass, name, value_type, data)
    except ValueError:
        return st.STATUS_INVALID_PARAMETER, None, 0
    if Length < fixed:
        return st.STATUS_BUFFER_TOO_SMALL, None, len(raw)
    status = st.STATUS_SUCCESS if Length >= len(raw) else st.STATUS_BUFFER_OVERFLOW
    if KeyValueInformation is not None:
        n = min(len(raw), Length) if status == st.STATUS_SUCCESS else fixed
        memoryview(KeyValueInformation).cast("B")[:n] = raw[:n]
    if status == st.STATUS_BUFFER_OVERFLOW:
        for field in ("Data", "Name"):
            if hasattr(info, field):
                delattr(info, field)
    return status, info, len(raw)


class RTL_QUERY_REGISTRY_TABLE:
    """One entry of RtlQueryRegistryValues' table.  With RTL_QUERY_REGISTRY_DIRECT
    the value is stored into `EntryContext` (an int for REG_DWORD, a str for
    REG_SZ/REG_EXPAND_SZ, a list for REG_MULTI_SZ, bytes otherwise)."""

    __slots__ = ("QueryRoutine", "Flags", "Name", "EntryContext", "DefaultType", "DefaultData", "DefaultLength")

    def __init__(self, QueryRoutine=None, Flags: int = 0, Name=None, EntryContext=None,
                 DefaultType: int = reg.REG_NONE, DefaultData=None, DefaultLength: int = 0):
        self.QueryRoutine = QueryRoutine
        self.Flags = Flags
        self.Name = Name
        self.EntryContext = EntryContext
        self.DefaultType = DefaultType
        self.DefaultData = DefaultData
        self.DefaultLength = DefaultLength


def _query_base(RelativeTo: int, Path) -> str:
    kind = RelativeTo & ~reg.RTL_REGISTRY_OPTIONAL
    if kind & reg.RTL_REGISTRY_HANDLE:
        return _key(Path).path
    if kind == reg.RTL_REGISTRY_ABSOLUTE:
        return str(Path).rstrip("\\")
    root = _RELATIVE_ROOTS.get(kind)
    if root is None:
        raise HandleError(st.STATUS_INVALID_PARAMETER, f"RelativeTo {RelativeTo:#x} is not supported")
    return root + ("\\" + str(Path).strip("\\") if Path else "")


def _deliver(entry: RTL_QUERY_REGISTRY_TABLE, name, value_type: int, data: bytes, context) -> int:
    if entry.Flags & reg.RTL_QUERY_REGISTRY_DIRECT:
        entry.EntryContext = values.decode(value_type, data)
        return st.STATUS_SUCCESS
    status = entry.QueryRoutine(name, value_type, data, len(data), context, entry.EntryContext)
    return st.STATUS_SUCCESS if status is None else status


def RtlQueryRegistryValues(RelativeTo: int, Path, QueryTable, Context=None, Environment=None) -> int:
    """Walk `QueryTable` (a list, ending at its end or at an entry with neither
    QueryRoutine nor Name) against the key named by RelativeTo/Path."""
    try:
        base = _query_base(RelativeTo, Path)
        store = _store()
    except HandleError as e:
        return e.status
    if store.key_path(base) is None:
        return st.STATUS_SUCCESS if RelativeTo & reg.RTL_REGISTRY_OPTIONAL else st.STATUS_OBJECT_NAME_NOT_FOUND
    key = base
    for entry in QueryTable:
        if entry.QueryRoutine is None and entry.Name is None:
            break
        if entry.Flags & reg.RTL_QUERY_REGISTRY_TOPKEY:
            key = base
        if entry.Flags & reg.RTL_QUERY_REGISTRY_SUBKEY:
            key = base + "\\" + str(entry.Name).strip("\\")
            if store.key_path(key) is None:
                return st.STATUS_OBJECT_NAME_NOT_FOUND
            continue
        if entry.Flags & reg.RTL_QUERY_REGISTRY_NOVALUE or (entry.Name is None and entry.QueryRoutine):
            if entry.Flags & reg.RTL_QUERY_REGISTRY_NOVALUE:
                status = entry.QueryRoutine(None, reg.REG_NONE, None, 0, Context, entry.EntryContext)
            else:
                status = st.STATUS_SUCCESS
                for name, value_type, data in store.values(key):
                    status = _deliver(entry, name, value_type, data, Context)
                    if not st.NT_SUCCESS(status):
                        break
            if status is not None and not st.NT_SUCCESS(status):
                return status
            continue
        found = store.get_value(key, str(entry.Name))
        if found is None:
            if entry.Flags & reg.RTL_QUERY_REGISTRY_REQUIRED:
                return st.STATUS_OBJECT_NAME_NOT_FOUND
            default_type = entry.DefaultType & 0x00FFFFFF
            if default_type == reg.REG_NONE:
                continue
            found = (str(entry.Name), default_type, values.encode(default_type, entry.DefaultData))
        name, value_type, data = found
        if entry.Flags & reg.RTL_QUERY_REGISTRY_TYPECHECK:
            want = entry.DefaultType >> reg.RTL_QUERY_REGISTRY_TYPECHECK_SHIFT
            if want and want != value_type:
                return st.STATUS_OBJECT_TYPE_MISMATCH
        status = _deliver(entry, name, value_type, data, Context)
        if not st.NT_SUCCESS(status):
            return status
        if entry.Flags & reg.RTL_QUERY_REGISTRY_DELETE:
            store.delete_value(key, name)
    return st.STATUS_SUCCESS


def _keys_left_open(driver) -> list:
    """Unload hook: close the key handles `driver` left open and name them."""
    out = []
    sysm = system.get()
    for proc in [sysm.system_process, *list(sysm.processes.values())]:
        for h, entry in proc.handles.items():
            obj = entry.obj
            if isinstance(obj, KEY_OBJECT) and obj.driver is driver:
                try:
                    proc.handles.remove(h)
                except HandleError:
                    continue
                release_entry(entry, proc)
                out.append(iodriver.Leak("handle", f"registry key {obj.path} not closed"))
    return out


iodriver.unload_hooks.append(_keys_left_open)
