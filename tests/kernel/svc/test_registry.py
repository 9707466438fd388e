"""The registry routines drivers use, driven directly against an in-process
kernel and service database: ZwOpenKey, ZwQueryValueKey, ZwClose,
RtlQueryRegistryValues."""

from __future__ import annotations

import struct

import pytest

from ringzero import ddk
from ringzero.kernel import system
from ringzero.kernel.context import in_process
from ringzero.kernel.ke import timer
from ringzero.kernel.svc import registry
from ringzero.kernel.svc.scm import ServiceControlManager
from ringzero.kernel.svc.store import Store
from ringzero.nt import registry as reg
from ringzero.nt import status as st

KEY = "\\Registry\\Machine\\System\\CurrentControlSet\\Services\\Beep"


@pytest.fixture
def kernel(tmp_path):
    sysm = system.boot(str(tmp_path))
    store = Store.open(str(tmp_path))
    sysm.scm = ServiceControlManager(sysm, store)
    store.create_key(KEY + "\\Parameters")
    store.put(KEY, "ImagePath", reg.REG_EXPAND_SZ, "/drivers/beep.py")
    store.put(KEY + "\\Parameters", "Frequency", reg.REG_DWORD, 440)
    store.put(KEY + "\\Parameters", "Names", reg.REG_MULTI_SZ, ["a", "bc"])
    try:
        with in_process(sysm.system_process):
            yield sysm
    finally:
        store.close()
        timer.stop()
        system.system = None


def open_key(path, attributes=ddk.OBJ_CASE_INSENSITIVE | ddk.OBJ_KERNEL_HANDLE):
    return ddk.ZwOpenKey(ddk.KEY_READ, ddk.InitializeObjectAttributes(path, attributes, None, None))


def test_open_query_close(kernel):
    status, h = open_key(KEY.upper() + "\\parameters")
    assert status == st.STATUS_SUCCESS
    assert h & registry.KERNEL_HANDLE_BITS == registry.KERNEL_HANDLE_BITS
    status, info, needed = ddk.ZwQueryValueKey(h, "Frequency", ddk.KeyValuePartialInformation, None, 0)
    assert (status, info, needed) == (st.STATUS_BUFFER_TOO_SMALL, None, 16)
    buf = bytearray(needed)
    status, info, n = ddk.ZwQueryValueKey(h, "frequency", ddk.KeyValuePartialInformation, buf, len(buf))
    assert status == st.STATUS_SUCCESS and n == 16
    assert (info.Type, info.DataLength, info.Data) == (ddk.REG_DWORD, 4, struct.pack("<I", 440))
    assert struct.unpack_from("<IIII", buf) == (0, ddk.REG_DWORD, 4, 440)
    assert ddk.ZwClose(h) == st.STATUS_SUCCESS
    assert ddk.ZwClose(h) == st.STATUS_INVALID_HANDLE
    assert ddk.ZwQueryValueKey(h, "Frequency", ddk.KeyValuePartialInformation, None, 64)[0] == st.STATUS_INVALID_HANDLE


def test_information_classes_and_a_short_buffer(kernel):
    _, h = open_key(KEY + "\\Parameters")
    status, info, needed = ddk.ZwQueryValueKey(h, "Names", ddk.KeyValueFullInformation, None, 1024)
    data = "a\0bc\0\0".encode("utf-16-le")
    assert status == st.STATUS_SUCCESS
    assert (info.Name, info.NameLength, info.Data, info.DataOffset % 8) == ("Names", 10, data, 0)
    status, info, _ = ddk.ZwQueryValueKey(h, "Names", ddk.KeyValueBasicInformation, None, 64)
    assert (status, info.Type, info.Name) == (st.STATUS_SUCCESS, ddk.REG_MULTI_SZ, "Names")
    status, info, needed = ddk.ZwQueryValueKey(h, "Names", ddk.KeyValuePartialInformation, None, 13)
    assert status == st.STATUS_BUFFER_OVERFLOW and needed == 12 + len(data)
    assert info.DataLength == len(data) and not hasattr(info, "Data")
    assert ddk.ZwQueryValueKey(h, "Missing", ddk.KeyValuePartialInformation, None, 64)[0] == st.STATUS_OBJECT_NAME_NOT_FOUND
    ddk.ZwClose(h)


def test_missing_keys_and_relative_opens(kernel):
    assert open_key(KEY + "\\Nope")[0] == st.STATUS_OBJECT_NAME_NOT_FOUND
    assert open_key("Services\\Beep")[0] == st.STATUS_OBJECT_PATH_SYNTAX_BAD
    _, root = open_key(KEY)
    status, h = ddk.ZwOpenKey(ddk.KEY_READ, ddk.InitializeObjectAttributes("Parameters", ddk.OBJ_KERNEL_HANDLE, root, None))
    assert status == st.STATUS_SUCCESS
    assert ddk.ZwQueryValueKey(h, "Frequency", ddk.KeyValuePartialInformation, None, 64)[1].Data == b"\xb8\x01\0\0"
    ddk.ZwClose(h)
    ddk.ZwClose(root)


def test_a_handle_without_obj_kernel_handle_lands_in_the_current_process(kernel):
    status, h = open_key(KEY, ddk.OBJ_CASE_INSENSITIVE)
    assert status == st.STATUS_SUCCESS and h & registry.KERNEL_HANDLE_BITS == 0
    entry = kernel.system_process.handles.get(h)
    assert entry.obj.type_name == "Key" and entry.obj.object_name() == KEY
    ddk.ZwClose(h)


def test_rtl_query_registry_values(kernel):
    seen = []

    def routine(ValueName, ValueType, ValueData, ValueLength, Context, EntryContext):
        seen.append((ValueName, ValueType, ValueLength, Context, EntryContext))
        return st.STATUS_SUCCESS

    table = [
        ddk.RTL_QUERY_REGISTRY_TABLE(None, ddk.RTL_QUERY_REGISTRY_DIRECT, "Frequency", None, ddk.REG_DWORD, 0, 4),
        ddk.RTL_QUERY_REGISTRY_TABLE(None, ddk.RTL_QUERY_REGISTRY_DIRECT, "Names"),
        ddk.RTL_QUERY_REGISTRY_TABLE(None, ddk.RTL_QUERY_REGISTRY_DIRECT, "Volume", None, ddk.REG_DWORD, 7, 4),
        ddk.RTL_QUERY_REGISTRY_TABLE(routine, 0, "Frequency", "ctx"),
        ddk.RTL_QUERY_REGISTRY_TABLE(),                      # the terminating entry
        ddk.RTL_QUERY_REGISTRY_TABLE(routine, 0, "NeverReached"),
    ]
    assert ddk.RtlQueryRegistryValues(ddk.RTL_REGISTRY_SERVICES, "Beep\\Parameters", table, "context", None) == 0
    assert [e.EntryContext for e in table[:3]] == [440, ["a", "bc"], 7]
    assert seen == [("Frequency", ddk.REG_DWORD, 4, "context", "ctx")]
    required = [ddk.RTL_QUERY_REGISTRY_TABLE(None, ddk.RTL_QUERY_REGISTRY_DIRECT | ddk.RTL_QUERY_REGISTRY_REQUIRED,
                                             "Volume")]
    assert ddk.RtlQueryRegistryValues(ddk.RTL_REGISTRY_ABSOLUTE, KEY + "\\Parameters", required, None, None) \
        == st.STATUS_OBJECT_NAME_NOT_FOUND
    typed = [ddk.RTL_QUERY_REGISTRY_TABLE(None, ddk.RTL_QUERY_REGISTRY_DIRECT | ddk.RTL_QUERY_REGISTRY_TYPECHECK,
                                          "Names", None, (ddk.REG_DWORD << ddk.RTL_QUERY_REGISTRY_TYPECHECK_SHIFT))]
    assert ddk.RtlQueryRegistryValues(ddk.RTL_REGISTRY_ABSOLUTE, KEY + "\\Parameters", typed, None, None) \
        == st.STATUS_OBJECT_TYPE_MISMATCH
    every = []
    all_values = [ddk.RTL_QUERY_REGISTRY_TABLE(lambda n, t, d, l, c, e: every.append(n), 0, None)]
    assert ddk.RtlQueryRegistryValues(ddk.RTL_REGISTRY_ABSOLUTE, KEY, [
        ddk.RTL_QUERY_REGISTRY_TABLE(None, ddk.RTL_QUERY_REGISTRY_SUBKEY, "Parameters"), *all_values], None, None) == 0
    assert every == ["Frequency", "Names"]
    assert ddk.RtlQueryRegistryValues(ddk.RTL_REGISTRY_SERVICES, "Nope", table, None, None) \
        == st.STATUS_OBJECT_NAME_NOT_FOUND
    assert ddk.RtlQueryRegistryValues(ddk.RTL_REGISTRY_SERVICES | ddk.RTL_REGISTRY_OPTIONAL, "Nope", table, None,
                                      None) == st.STATUS_SUCCESS
