"""NTSTATUS values and helpers, and the other pure-data NT constant modules.

Expected numbers are the ones printed in the SDK/DDK headers (ntstatus.h,
winioctl.h, winnt.h, wdm.h, winsvc.h), written out literally here.
"""

import pytest

from ringzero.nt import access, ioctl, irp, service, status
from ringzero.nt.status import NT_ERROR, NT_INFORMATION, NT_SUCCESS, NT_WARNING, status_name
from ringzero.win32 import win32con, winioctlcon

STATUS_VALUES = {
    "STATUS_SUCCESS": 0x00000000,
    "STATUS_WAIT_0": 0x00000000,
    "STATUS_WAIT_1": 0x00000001,
    "STATUS_WAIT_2": 0x00000002,
    "STATUS_WAIT_3": 0x00000003,
    "STATUS_ABANDONED_WAIT_0": 0x00000080,
    "STATUS_USER_APC": 0x000000C0,
    "STATUS_ALERTED": 0x00000101,
    "STATUS_TIMEOUT": 0x00000102,
    "STATUS_PENDING": 0x00000103,
    "STATUS_REPARSE": 0x00000104,
    "STATUS_MORE_ENTRIES": 0x00000105,
    "STATUS_NOT_ALL_ASSIGNED": 0x00000106,
    "STATUS_PROCESS_NOT_IN_JOB": 0x00000123,
    "STATUS_OBJECT_NAME_EXISTS": 0x40000000,
    "STATUS_DATATYPE_MISALIGNMENT": 0x80000002,
    "STATUS_BUFFER_OVERFLOW": 0x80000005,
    "STATUS_DEVICE_BUSY": 0x80000011,
    "STATUS_NO_MORE_ENTRIES": 0x8000001A,
    "STATUS_UNSUCCESSFUL": 0xC0000001,
    "STATUS_NOT_IMPLEMENTED": 0xC0000002,
    "STATUS_INVALID_INFO_CLASS": 0xC0000003,
    "STATUS_INFO_LENGTH_MISMATCH": 0xC0000004,
    "STATUS_ACCESS_VIOLATION": 0xC0000005,
    "STATUS_INVALID_HANDLE": 0xC0000008,
    "STATUS_INVALID_CID": 0xC000000B,
    "STATUS_INVALID_PARAMETER": 0xC000000D,
    "STATUS_NO_SUCH_DEVICE": 0xC000000E,
    "STATUS_NO_SUCH_FILE": 0xC000000F,
    "STATUS_INVALID_DEVICE_REQUEST": 0xC0000010,
    "STATUS_END_OF_FILE": 0xC0000011,
    "STATUS_NO_MEMORY": 0xC0000017,
    "STATUS_CONFLICTING_ADDRESSES": 0xC0000018,
    "STATUS_ACCESS_DENIED": 0xC0000022,
    "STATUS_BUFFER_TOO_SMALL": 0xC0000023,
    "STATUS_OBJECT_TYPE_MISMATCH": 0xC0000024,
    "STATUS_OBJECT_NAME_INVALID": 0xC0000033,
    "STATUS_OBJECT_NAME_NOT_FOUND": 0xC0000034,
    "STATUS_OBJECT_NAME_COLLISION": 0xC0000035,
    "STATUS_PORT_DISCONNECTED": 0xC0000037,
    "STATUS_OBJECT_PATH_NOT_FOUND": 0xC000003A,
    "STATUS_OBJECT_PATH_SYNTAX_BAD": 0xC000003B,
    "STATUS_SHARING_VIOLATION": 0xC0000043,
    "STATUS_QUOTA_EXCEEDED": 0xC0000044,
    "STATUS_MUTANT_NOT_OWNED": 0xC0000046,
    "STATUS_SEMAPHORE_LIMIT_EXCEEDED": 0xC0000047,
    "STATUS_DELETE_PENDING": 0xC0000056,
    "STATUS_PRIVILEGE_NOT_HELD": 0xC0000061,
    "STATUS_INSUFFICIENT_RESOURCES": 0xC000009A,
    "STATUS_DEVICE_NOT_READY": 0xC00000A3,
    "STATUS_IO_TIMEOUT": 0xC00000B5,
    "STATUS_NOT_SUPPORTED": 0xC00000BB,
    "STATUS_DEVICE_DOES_NOT_EXIST": 0xC00000C0,
    "STATUS_INTERNAL_ERROR": 0xC00000E5,
    "STATUS_INVALID_USER_BUFFER": 0xC00000E8,
    "STATUS_INVALID_PARAMETER_1": 0xC00000EF,
    "STATUS_INVALID_PARAMETER_2": 0xC00000F0,
    "STATUS_INVALID_PARAMETER_3": 0xC00000F1,
    "STATUS_PROCESS_IS_TERMINATING": 0xC000010A,
    "STATUS_IMAGE_ALREADY_LOADED": 0xC000010E,
    "STATUS_TOO_MANY_OPENED_FILES": 0xC000011F,
    "STATUS_CANCELLED": 0xC0000120,
    "STATUS_FILE_CLOSED": 0xC0000128,
    "STATUS_INVALID_ADDRESS": 0xC0000141,
    "STATUS_DLL_INIT_FAILED": 0xC0000142,
    "STATUS_PIPE_BROKEN": 0xC000014B,
    "STATUS_DEVICE_CONFIGURATION_ERROR": 0xC0000182,
    "STATUS_DRIVER_INTERNAL_ERROR": 0xC0000183,
    "STATUS_INVALID_DEVICE_STATE": 0xC0000184,
    "STATUS_INVALID_BUFFER_SIZE": 0xC0000206,
    "STATUS_CONNECTION_DISCONNECTED": 0xC000020C,
    "STATUS_NOT_FOUND": 0xC0000225,
    "STATUS_DRIVER_ENTRYPOINT_NOT_FOUND": 0xC0000263,
    "STATUS_DRIVER_UNABLE_TO_LOAD": 0xC000026C,
}


@pytest.mark.parametrize("name,value", sorted(STATUS_VALUES.items()))
def test_status_values(name, value):
    assert getattr(status, name) == value


def test_no_invented_status_names():
    assert not hasattr(status, "STATUS_NO_SUCH_PROCESS")


def test_status_constants_are_unsigned_32_bit():
    for name, value in vars(status).items():
        if name.startswith(("STATUS_", "DBG_")):
            assert isinstance(value, int) and 0 <= value <= 0xFFFFFFFF, name


@pytest.mark.parametrize(
    "value,success,information,warning,error",
    [
        (0x00000000, True, False, False, False),
        (0x00000103, True, False, False, False),
        (0x3FFFFFFF, True, False, False, False),
        (0x40000000, True, True, False, False),
        (0x7FFFFFFF, True, True, False, False),
        (0x80000000, False, False, True, False),
        (0x80000005, False, False, True, False),
        (0xBFFFFFFF, False, False, True, False),
        (0xC0000000, False, False, False, True),
        (0xC0000022, False, False, False, True),
        (0xFFFFFFFF, False, False, False, True),
    ],
)
def test_severity_predicates(value, success, information, warning, error):
    assert NT_SUCCESS(value) is success
    assert NT_INFORMATION(value) is information
    assert NT_WARNING(value) is warning
    assert NT_ERROR(value) is error


def test_predicates_accept_signed_values():
    assert NT_SUCCESS(0x7FFFFFFF)
    assert not NT_SUCCESS(-1)
    assert NT_ERROR(-1073741790)
    assert NT_WARNING(-2147483643)
    assert NT_SUCCESS(-(2**32) + 0x103)


def test_to_signed():
    assert status.to_signed(status.STATUS_ACCESS_DENIED) == -1073741790
    assert status.to_signed(status.STATUS_PENDING) == 0x103


def test_status_name():
    assert status_name(0) == "STATUS_SUCCESS"
    assert status_name(0x80) == "STATUS_ABANDONED_WAIT_0"
    assert status_name(0xC0000022) == "STATUS_ACCESS_DENIED"
    assert status_name(-1073741790) == "STATUS_ACCESS_DENIED"
    assert status_name(0x80000005) == "STATUS_BUFFER_OVERFLOW"
    assert status_name(0xC0DE0123) == "0xC0DE0123"
    assert status_name(0x00000104) == "STATUS_REPARSE"


def test_ctl_code_of_the_seed_ioctl():
    code = ioctl.CTL_CODE(
        ioctl.FILE_DEVICE_UNKNOWN, 0x800, ioctl.METHOD_BUFFERED, ioctl.FILE_READ_ACCESS | ioctl.FILE_WRITE_ACCESS
    )
    assert code == 0x22E000
    assert ioctl.CTL_CODE(ioctl.FILE_DEVICE_UNKNOWN, 0x803, ioctl.METHOD_BUFFERED, 3) == 0x22E00C
    assert ioctl.CTL_CODE(ioctl.FILE_DEVICE_UNKNOWN, 0x800, ioctl.METHOD_BUFFERED, ioctl.FILE_ANY_ACCESS) == 0x222000
    assert ioctl.DEVICE_TYPE_FROM_CTL_CODE(code) == ioctl.FILE_DEVICE_UNKNOWN == 0x22
    assert ioctl.METHOD_FROM_CTL_CODE(code) == ioctl.METHOD_BUFFERED
    assert ioctl.FUNCTION_FROM_CTL_CODE(code) == 0x800
    assert ioctl.ACCESS_FROM_CTL_CODE(code) == ioctl.FILE_READ_ACCESS | ioctl.FILE_WRITE_ACCESS


def test_well_known_ioctl_codes():
    assert winioctlcon.IOCTL_DISK_GET_DRIVE_GEOMETRY == 0x00070000
    assert winioctlcon.IOCTL_STORAGE_GET_DEVICE_NUMBER == 0x002D1080
    assert winioctlcon.IOCTL_STORAGE_QUERY_PROPERTY == 0x002D1400
    assert winioctlcon.IOCTL_DISK_GET_LENGTH_INFO == 0x0007405C
    assert winioctlcon.IOCTL_VOLUME_GET_VOLUME_DISK_EXTENTS == 0x00560000
    assert winioctlcon.FSCTL_LOCK_VOLUME == 0x00090018
    assert winioctlcon.FSCTL_SET_COMPRESSION == 0x0009C040
    assert winioctlcon.CTL_CODE is ioctl.CTL_CODE
    assert winioctlcon.FILE_DEVICE_UNKNOWN == 0x22


def test_device_types_and_characteristics():
    assert ioctl.FILE_DEVICE_DISK == 0x07
    assert ioctl.FILE_DEVICE_NULL == 0x15
    assert ioctl.FILE_DEVICE_KSEC == 0x39
    assert ioctl.FILE_DEVICE_SECURE_OPEN == 0x100
    assert ioctl.FILE_REMOVABLE_MEDIA == 0x1
    assert ioctl.FILE_AUTOGENERATED_DEVICE_NAME == 0x80
    assert ioctl.DEVICE_TYPE_NAMES[0x22] == "FILE_DEVICE_UNKNOWN"
    assert ioctl.DEVICE_TYPE_NAMES[0x20] == "FILE_DEVICE_TAPE_FILE_SYSTEM"
    assert max(ioctl.DEVICE_TYPE_NAMES) < 0x100


def test_access_masks():
    assert access.FILE_ALL_ACCESS == 0x001F01FF
    assert access.FILE_GENERIC_READ == 0x00120089
    assert access.FILE_GENERIC_WRITE == 0x00120116
    assert access.FILE_GENERIC_EXECUTE == 0x001200A0
    assert access.EVENT_ALL_ACCESS == 0x001F0003
    assert access.MUTANT_ALL_ACCESS == 0x001F0001
    assert access.SEMAPHORE_ALL_ACCESS == 0x001F0003
    assert access.STANDARD_RIGHTS_REQUIRED == 0x000F0000
    assert access.MAXIMUM_ALLOWED == 0x02000000
    assert access.GENERIC_READ == 0x80000000


def test_map_generic_files():
    m = access.FILE_GENERIC_MAPPING
    assert access.map_generic(access.GENERIC_READ, m) == access.FILE_GENERIC_READ
    assert access.map_generic(access.GENERIC_WRITE, m) == access.FILE_GENERIC_WRITE
    assert access.map_generic(access.GENERIC_EXECUTE, m) == access.FILE_GENERIC_EXECUTE
    assert access.map_generic(access.GENERIC_ALL, m) == access.FILE_ALL_ACCESS
    assert access.map_generic(access.GENERIC_READ | access.GENERIC_WRITE, m) == 0x0012019F
    assert access.map_generic(access.FILE_READ_DATA, m) == access.FILE_READ_DATA
    assert access.map_generic(access.MAXIMUM_ALLOWED | access.GENERIC_READ, m) == (
        access.MAXIMUM_ALLOWED | access.FILE_GENERIC_READ
    )


def test_map_generic_events():
    m = access.EVENT_GENERIC_MAPPING
    assert access.map_generic(access.GENERIC_READ, m) == access.READ_CONTROL | access.EVENT_QUERY_STATE
    assert access.map_generic(access.GENERIC_WRITE, m) == access.READ_CONTROL | access.EVENT_MODIFY_STATE
    assert access.map_generic(access.GENERIC_EXECUTE, m) == access.READ_CONTROL | access.SYNCHRONIZE
    assert access.map_generic(access.GENERIC_ALL | access.DELETE, m) == access.EVENT_ALL_ACCESS


def test_map_generic_clears_generic_bits():
    for mapping in (access.FILE_GENERIC_MAPPING, access.EVENT_GENERIC_MAPPING, access.MUTANT_GENERIC_MAPPING):
        assert access.map_generic(0xF0000000, mapping) & 0xF0000000 == 0
        assert access.map_generic(-1, mapping) == 0x0FFFFFFF


def test_irp_major_functions():
    assert irp.IRP_MJ_CREATE == 0
    assert irp.IRP_MJ_CLOSE == 2
    assert irp.IRP_MJ_READ == 3
    assert irp.IRP_MJ_WRITE == 4
    assert irp.IRP_MJ_DEVICE_CONTROL == 0x0E
    assert irp.IRP_MJ_INTERNAL_DEVICE_CONTROL == 0x0F
    assert irp.IRP_MJ_CLEANUP == 0x12
    assert irp.IRP_MJ_PNP == irp.IRP_MJ_MAXIMUM_FUNCTION == 0x1B
    assert len(irp.IRP_MJ_NAMES) == irp.IRP_MJ_MAXIMUM_FUNCTION + 1
    for number, name in enumerate(irp.IRP_MJ_NAMES):
        assert getattr(irp, name) == number


def test_irp_and_kernel_constants():
    assert irp.DO_BUFFERED_IO == 0x4
    assert irp.DO_EXCLUSIVE == 0x8
    assert irp.DO_DIRECT_IO == 0x10
    assert irp.DO_DEVICE_INITIALIZING == 0x80
    assert irp.IRP_BUFFERED_IO == 0x10
    assert irp.IRP_DEALLOCATE_BUFFER == 0x20
    assert irp.IRP_INPUT_OPERATION == 0x40
    assert irp.SL_PENDING_RETURNED == 0x01
    assert (irp.FILE_SUPERSEDE, irp.FILE_OPEN, irp.FILE_CREATE) == (0, 1, 2)
    assert (irp.FILE_OPEN_IF, irp.FILE_OVERWRITE, irp.FILE_OVERWRITE_IF) == (3, 4, 5)
    assert (irp.CREATE_NEW, irp.TRUNCATE_EXISTING) == (1, 5)
    assert irp.FILE_FLAG_OVERLAPPED == 0x40000000
    assert (irp.NonPagedPool, irp.PagedPool, irp.NonPagedPoolNx) == (0, 1, 512)
    assert (irp.KernelMode, irp.UserMode) == (0, 1)
    assert (irp.NotificationEvent, irp.SynchronizationEvent) == (0, 1)
    assert (irp.MmNonCached, irp.MmCached, irp.MmWriteCombined) == (0, 1, 2)
    assert (irp.LowPagePriority, irp.NormalPagePriority, irp.HighPagePriority) == (0, 16, 32)
    assert (irp.PASSIVE_LEVEL, irp.APC_LEVEL, irp.DISPATCH_LEVEL, irp.HIGH_LEVEL) == (0, 1, 2, 15)
    assert irp.PAGE_SIZE == 4096
    assert irp.IO_NO_INCREMENT == 0 and irp.IO_SERIAL_INCREMENT == 2


def test_service_constants():
    assert service.SERVICE_KERNEL_DRIVER == 1
    assert service.SERVICE_FILE_SYSTEM_DRIVER == 2
    assert service.SERVICE_DRIVER == 0xB
    assert service.SERVICE_WIN32 == 0x30
    assert service.SERVICE_DEMAND_START == 3
    assert service.SERVICE_RUNNING == 4
    assert service.SC_MANAGER_ALL_ACCESS == 0xF003F
    assert service.SERVICE_ALL_ACCESS == 0xF01FF
    assert service.SERVICE_STATE_ALL == 3
    assert service.SERVICE_NO_CHANGE == 0xFFFFFFFF


def test_win32con_is_built_from_the_nt_modules():
    assert win32con.SERVICE_ALL_ACCESS is service.SERVICE_ALL_ACCESS
    assert win32con.GENERIC_READ == access.GENERIC_READ
    assert win32con.OPEN_EXISTING == 3
    assert win32con.INFINITE == 0xFFFFFFFF
    assert win32con.WAIT_OBJECT_0 == 0
    assert win32con.WAIT_ABANDONED_0 == 0x80
    assert win32con.WAIT_TIMEOUT == 258
    assert win32con.WAIT_FAILED == 0xFFFFFFFF
    assert win32con.EVENT_MODIFY_STATE == 2
    assert win32con.SC_STATUS_PROCESS_INFO == 0
