"""RtlNtStatusToDosError, the Win32 error codes and their FormatMessage texts.

Each expected mapping below was read off Wine's ntdll conversion table
(dlls/ntdll/error.h); each message is the English system message text
([MS-ERREF] 2.2 / SDK winerror.h).
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringzero.nt import errors, status
from ringzero.nt.errors import RtlNtStatusToDosError
from ringzero.nt.messages import WIN32_MESSAGES
from ringzero.win32 import winerror

SPOT_CHECKS = [
    ("STATUS_SUCCESS", 0),
    ("STATUS_WAIT_1", 731),
    ("STATUS_ABANDONED_WAIT_0", 128),
    ("STATUS_TIMEOUT", 1460),
    ("STATUS_PENDING", 997),
    ("STATUS_REPARSE", 741),
    ("STATUS_MORE_ENTRIES", 234),
    ("STATUS_NOT_ALL_ASSIGNED", 1300),
    ("STATUS_OBJECT_NAME_EXISTS", 698),
    ("STATUS_DATATYPE_MISALIGNMENT", 998),
    ("STATUS_BUFFER_OVERFLOW", 234),
    ("STATUS_DEVICE_BUSY", 170),
    ("STATUS_NO_MORE_ENTRIES", 259),
    ("STATUS_UNSUCCESSFUL", 31),
    ("STATUS_NOT_IMPLEMENTED", 1),
    ("STATUS_INVALID_INFO_CLASS", 87),
    ("STATUS_INFO_LENGTH_MISMATCH", 24),
    ("STATUS_ACCESS_VIOLATION", 998),
    ("STATUS_INVALID_HANDLE", 6),
    ("STATUS_INVALID_CID", 87),
    ("STATUS_INVALID_PARAMETER", 87),
    ("STATUS_NO_SUCH_DEVICE", 433),
    ("STATUS_NO_SUCH_FILE", 2),
    ("STATUS_INVALID_DEVICE_REQUEST", 1),
    ("STATUS_END_OF_FILE", 38),
    ("STATUS_NO_MEMORY", 8),
    ("STATUS_CONFLICTING_ADDRESSES", 487),
    ("STATUS_ACCESS_DENIED", 5),
    ("STATUS_BUFFER_TOO_SMALL", 122),
    ("STATUS_OBJECT_TYPE_MISMATCH", 6),
    ("STATUS_OBJECT_NAME_INVALID", 123),
    ("STATUS_OBJECT_NAME_NOT_FOUND", 2),
    ("STATUS_OBJECT_NAME_COLLISION", 183),
    ("STATUS_PORT_DISCONNECTED", 6),
    ("STATUS_OBJECT_PATH_NOT_FOUND", 3),
    ("STATUS_OBJECT_PATH_SYNTAX_BAD", 161),
    ("STATUS_SHARING_VIOLATION", 32),
    ("STATUS_QUOTA_EXCEEDED", 1816),
    ("STATUS_MUTANT_NOT_OWNED", 288),
    ("STATUS_SEMAPHORE_LIMIT_EXCEEDED", 298),
    ("STATUS_DELETE_PENDING", 5),
    ("STATUS_PRIVILEGE_NOT_HELD", 1314),
    ("STATUS_INSUFFICIENT_RESOURCES", 1450),
    ("STATUS_DEVICE_NOT_READY", 21),
    ("STATUS_IO_TIMEOUT", 121),
    ("STATUS_NOT_SUPPORTED", 50),
    ("STATUS_DEVICE_DOES_NOT_EXIST", 55),
    ("STATUS_INTERNAL_ERROR", 1359),
    ("STATUS_INVALID_USER_BUFFER", 1784),
    ("STATUS_INVALID_PARAMETER_1", 87),
    ("STATUS_INVALID_PARAMETER_3", 87),
    ("STATUS_PROCESS_IS_TERMINATING", 5),
    ("STATUS_IMAGE_ALREADY_LOADED", 1056),
    ("STATUS_TOO_MANY_OPENED_FILES", 4),
    ("STATUS_CANCELLED", 995),
    ("STATUS_FILE_CLOSED", 6),
    ("STATUS_INVALID_ADDRESS", 59),
    ("STATUS_DLL_INIT_FAILED", 1114),
    ("STATUS_PIPE_BROKEN", 109),
    ("STATUS_DEVICE_CONFIGURATION_ERROR", 87),
    ("STATUS_DRIVER_INTERNAL_ERROR", 1117),
    ("STATUS_INVALID_DEVICE_STATE", 22),
    ("STATUS_INVALID_BUFFER_SIZE", 1784),
    ("STATUS_CONNECTION_DISCONNECTED", 64),
    ("STATUS_NOT_FOUND", 1168),
    ("STATUS_DRIVER_ENTRYPOINT_NOT_FOUND", 127),
    ("STATUS_DRIVER_UNABLE_TO_LOAD", 2001),
    ("STATUS_PROCESS_NOT_IN_JOB", 759),
]


@pytest.mark.parametrize("name,expected", SPOT_CHECKS)
def test_status_to_dos_error(name, expected):
    assert RtlNtStatusToDosError(getattr(status, name)) == expected


def test_named_results():
    assert RtlNtStatusToDosError(status.STATUS_BUFFER_TOO_SMALL) == winerror.ERROR_INSUFFICIENT_BUFFER
    assert RtlNtStatusToDosError(status.STATUS_CANCELLED) == winerror.ERROR_OPERATION_ABORTED
    assert RtlNtStatusToDosError(status.STATUS_BUFFER_OVERFLOW) == winerror.ERROR_MORE_DATA
    assert RtlNtStatusToDosError(status.STATUS_TIMEOUT) == winerror.ERROR_TIMEOUT
    assert RtlNtStatusToDosError(status.STATUS_NO_SUCH_DEVICE) == winerror.ERROR_NO_SUCH_DEVICE


def test_signed_input():
    assert RtlNtStatusToDosError(-1073741790) == 5
    assert RtlNtStatusToDosError(-2147483643) == 234


def test_unknown_status_is_mr_mid_not_found():
    assert RtlNtStatusToDosError(0xC0DE0001) == winerror.ERROR_MR_MID_NOT_FOUND == 317
    assert RtlNtStatusToDosError(0x0000010F) == 317
    assert RtlNtStatusToDosError(0x80000008) == 317


def test_special_facility_rules():
    assert RtlNtStatusToDosError(0x80070005) == 5
    assert RtlNtStatusToDosError(0xC0070057) == 87
    assert RtlNtStatusToDosError(0xC0010002) == 2
    assert RtlNtStatusToDosError(0xD0000022) == 5


def test_customer_statuses_pass_through():
    assert RtlNtStatusToDosError(0xE0001234) == 0xE0001234
    assert RtlNtStatusToDosError(0x20000001) == 0x20000001


def test_statuses_that_map_to_themselves():
    assert RtlNtStatusToDosError(0x80000003) == 0x80000003
    assert RtlNtStatusToDosError(0xC0000094) == 0xC0000094


def test_every_defined_status_maps_to_a_named_error_or_a_passthrough():
    table_values = set(errors._STATUS_TO_DOS.values())
    for name, value in vars(status).items():
        if not name.startswith(("STATUS_", "DBG_")) or name.startswith("STATUS_SEVERITY_"):
            continue
        result = RtlNtStatusToDosError(value)
        assert result <= 0xFFFF or result == value or result in table_values, name


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_any_32_bit_status_converts(value):
    result = RtlNtStatusToDosError(value)
    assert isinstance(result, int)
    assert 0 <= result <= 0xFFFFFFFF
    if not value & 0x20000000 and result > 0xFFFF:
        assert result in set(errors._STATUS_TO_DOS.values())
    assert RtlNtStatusToDosError(value - 0x100000000 if value & 0x80000000 else value) == result


@given(st.integers(min_value=0, max_value=0xFFFFFFFF).filter(lambda v: not v & 0x20000000 and v))
def test_non_customer_results_fit_a_word_or_come_from_the_table(value):
    result = RtlNtStatusToDosError(value)
    assert 0 <= result <= 0xFFFF or result in set(errors._STATUS_TO_DOS.values())


WIN32_VALUES = {
    "ERROR_SUCCESS": 0,
    "NO_ERROR": 0,
    "ERROR_INVALID_FUNCTION": 1,
    "ERROR_FILE_NOT_FOUND": 2,
    "ERROR_PATH_NOT_FOUND": 3,
    "ERROR_TOO_MANY_OPEN_FILES": 4,
    "ERROR_ACCESS_DENIED": 5,
    "ERROR_INVALID_HANDLE": 6,
    "ERROR_NOT_ENOUGH_MEMORY": 8,
    "ERROR_NOT_READY": 21,
    "ERROR_BAD_COMMAND": 22,
    "ERROR_GEN_FAILURE": 31,
    "ERROR_SHARING_VIOLATION": 32,
    "ERROR_HANDLE_EOF": 38,
    "ERROR_NOT_SUPPORTED": 50,
    "ERROR_DEV_NOT_EXIST": 55,
    "ERROR_INVALID_PARAMETER": 87,
    "ERROR_BROKEN_PIPE": 109,
    "ERROR_INSUFFICIENT_BUFFER": 122,
    "ERROR_INVALID_NAME": 123,
    "ERROR_BAD_PATHNAME": 161,
    "ERROR_BUSY": 170,
    "ERROR_ALREADY_EXISTS": 183,
    "ERROR_PIPE_NOT_CONNECTED": 233,
    "ERROR_MORE_DATA": 234,
    "WAIT_TIMEOUT": 258,
    "ERROR_MR_MID_NOT_FOUND": 317,
    "ERROR_INVALID_ADDRESS": 487,
    "ERROR_OPERATION_ABORTED": 995,
    "ERROR_IO_INCOMPLETE": 996,
    "ERROR_IO_PENDING": 997,
    "ERROR_NOACCESS": 998,
    "ERROR_DEPENDENT_SERVICES_RUNNING": 1051,
    "ERROR_INVALID_SERVICE_CONTROL": 1052,
    "ERROR_SERVICE_REQUEST_TIMEOUT": 1053,
    "ERROR_SERVICE_ALREADY_RUNNING": 1056,
    "ERROR_INVALID_SERVICE_ACCOUNT": 1057,
    "ERROR_SERVICE_DISABLED": 1058,
    "ERROR_SERVICE_DOES_NOT_EXIST": 1060,
    "ERROR_SERVICE_CANNOT_ACCEPT_CTRL": 1061,
    "ERROR_SERVICE_NOT_ACTIVE": 1062,
    "ERROR_SERVICE_SPECIFIC_ERROR": 1066,
    "ERROR_PROCESS_ABORTED": 1067,
    "ERROR_SERVICE_MARKED_FOR_DELETE": 1072,
    "ERROR_SERVICE_EXISTS": 1073,
    "ERROR_NOT_FOUND": 1168,
    "ERROR_PRIVILEGE_NOT_HELD": 1314,
    "ERROR_NO_SYSTEM_RESOURCES": 1450,
    "ERROR_TIMEOUT": 1460,
    "ERROR_INVALID_USER_BUFFER": 1784,
}


@pytest.mark.parametrize("name,value", sorted(WIN32_VALUES.items()))
def test_win32_error_values(name, value):
    assert getattr(winerror, name) == value


@pytest.mark.parametrize(
    "code,text",
    [
        (0, "The operation completed successfully."),
        (1, "Incorrect function."),
        (2, "The system cannot find the file specified."),
        (3, "The system cannot find the path specified."),
        (5, "Access is denied."),
        (6, "The handle is invalid."),
        (87, "The parameter is incorrect."),
        (122, "The data area passed to a system call is too small."),
        (234, "More data is available."),
        (258, "The wait operation timed out."),
        (433, "A device which does not exist was specified."),
        (995, "The I/O operation has been aborted because of either a thread exit or an application request."),
        (997, "Overlapped I/O operation is in progress."),
        (1060, "The specified service does not exist as an installed service."),
        (1062, "The service has not been started."),
        (1073, "The specified service already exists."),
        (1450, "Insufficient system resources exist to complete the requested service."),
    ],
)
def test_format_message(code, text):
    assert winerror.format_message(code) == text


def test_format_message_of_win32_hresult():
    assert winerror.format_message(winerror.HRESULT_FROM_WIN32(5)) == "Access is denied."
    assert winerror.format_message(0x80070002) == "The system cannot find the file specified."


def test_format_message_unknown_code():
    text = winerror.format_message(0xDEAD)
    assert isinstance(text, str) and text
    assert "0x0000DEAD" in text


def test_every_defined_code_has_its_message():
    for name, value in vars(winerror).items():
        if name.startswith(("ERROR_", "WAIT_", "RPC_", "WSA")) and isinstance(value, int):
            assert value in WIN32_MESSAGES, name
            assert winerror.format_message(value) == WIN32_MESSAGES[value]
            assert not WIN32_MESSAGES[value].endswith(("\r", "\n", " "))


def test_hresult_helpers():
    assert winerror.HRESULT_FROM_WIN32(5) == winerror.E_ACCESSDENIED == -2147024891
    assert winerror.HRESULT_FROM_WIN32(0) == 0
    assert winerror.E_FAIL == -2147467259
    assert winerror.FAILED(winerror.E_FAIL) and winerror.SUCCEEDED(winerror.S_FALSE)
    assert winerror.HRESULT_CODE(winerror.E_ACCESSDENIED) == 5
    assert winerror.HRESULT_FACILITY(winerror.E_ACCESSDENIED) == winerror.FACILITY_WIN32 == 7
