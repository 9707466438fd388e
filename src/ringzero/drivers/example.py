"""Example: a driver-mediated pipe between programs (the third tutorial's driver).

Opening \\\\.\\Example\\HELLO reaches \\Device\\Example with FILE_OBJECT.FileName
"\\HELLO".  The device context (the device extension) keeps kListMutex and
pExampleList, a list of resource contexts, one per name compared without
regard to case, each reference-counted and stored in the file object's
FsContext; each resource context has its own lock and ring buffer.  Programs
that open the same name share the ring: what one writes another reads.

Reads and writes never block by default, as in the tutorial: a write stores
what fits and returns how much (0 when the ring is full), a read returns what
is there (0 bytes when it is empty).  Beyond the tutorial, which says these
could be IOCTLs (ringzero.drivers.example_ioctl has their codes):
IOCTL_EXAMPLE_SET_SIZE resizes a context's ring, IOCTL_EXAMPLE_QUERY reports on
a context, and IOCTL_EXAMPLE_SET_BLOCKING makes a handle's reads of an empty
ring pend until a writer supplies data, and its writes that do not fit pend
until readers have made room for all of their data (CancelIo, the handle's
close or the program's death cancels either); a write fills the oldest pending
read first, and a read that makes room lets the oldest pending write in.
"""

import ctypes

from ringzero.ddk import *
from ringzero.drivers.example_ioctl import *
from ringzero.kernel.mm.pool import make_tag

EXAMPLE_POOL_TAG = make_tag("Exmp")      # 'pmxE' in C

# How long a dispatch routine waits for a lock before failing the request
# (the tutorial's TimeOut: relative, in 100 ns units).
NumberOfSeconds = 10
TimeOut = LARGE_INTEGER(-10000000 * NumberOfSeconds)
NoWait = LARGE_INTEGER(0)


class EXAMPLE_DEVICE_CONTEXT(ctypes.Structure):
    """The device extension's C layout (x64), which IoCreateDevice sizes the
    extension by.  The driver keeps the fields as attributes of the extension:

    kListMutex     KMUTEX guarding pExampleList and every context's uiRefCount
    pExampleList   the first EXAMPLE_LIST, linked through pNext; every context
                   some file object's FsContext points to is on it
    """

    _fields_ = [("pExampleList", PVOID), ("kListMutex", ctypes.c_byte * 56)]


class EXAMPLE_LIST(ctypes.Structure):
    """A resource context's C layout (x64), which the pool block is sized by.
    The driver keeps the fields as attributes of the block:

    pNext                  the next context on the device's list
    usPipeName             the name it was created with ("\\HELLO")
    uiRefCount             file objects whose FsContext is this context and
                           that have not had IRP_MJ_CLOSE; at 0 the context
                           leaves the list and is freed            (kListMutex)
    kInstanceBufferMutex   KMUTEX guarding every field below
    pCircularBuffer        the ring: a pool block of uiBufferSize bytes
    uiStartIndex           where the oldest queued byte is
    uiStopIndex            where the next written byte goes
    uiBytesQueued          bytes from uiStartIndex on, wrapping, not yet read
    PendingReads           blocking read IRPs waiting for data, oldest first,
                           each with Example_CancelPending set (or being
                           cancelled); never non-empty while uiBytesQueued > 0
    PendingWrites          blocking write IRPs waiting for room, oldest first,
                           each with Example_CancelPending set (or being
                           cancelled) and the count of its bytes already
                           stored in Tail.Overlay.DriverContext[0]; never
                           non-empty while the ring has room, so no write
                           overtakes them
    """

    _fields_ = [("pNext", PVOID), ("usPipeName", ctypes.c_byte * 16), ("uiRefCount", ULONG),
                ("uiStartIndex", ULONG), ("uiStopIndex", ULONG), ("uiBytesQueued", ULONG),
                ("uiBufferSize", ULONG), ("pCircularBuffer", PVOID), ("kInstanceBufferMutex", ctypes.c_byte * 56),
                ("PendingReads", ctypes.c_byte * 16), ("PendingWrites", ctypes.c_byte * 16)]


# -- locks ----------------------------------------------------------------------

def Example_WaitForMutex(pMutex, pTimeOut):
    """KeWaitForMutexObject, with the outcome as the status to complete an IRP
    with.  STATUS_TIMEOUT and STATUS_ALERTED are success codes, so the
    tutorial's NT_SUCCESS check would go on without owning the mutex."""
    NtStatus = KeWaitForMutexObject(pMutex, Executive, KernelMode, FALSE, pTimeOut)
    if NtStatus in (STATUS_SUCCESS, STATUS_ABANDONED):
        return STATUS_SUCCESS
    if NtStatus == STATUS_TIMEOUT:
        return STATUS_IO_TIMEOUT
    return STATUS_CANCELLED          # alerted: the requesting program is going away


def Example_AcquireMutex(pMutex):
    """For close, cleanup and cancel, which must not fail: wait until owned."""
    while KeWaitForMutexObject(pMutex, Executive, KernelMode, FALSE, NULL) not in (STATUS_SUCCESS, STATUS_ABANDONED):
        pass


# -- the ring buffer (kInstanceBufferMutex held) ------------------------------------

def Example_WriteData(pExampleList, pData):
    """Store what fits of `pData`; the number of bytes stored."""
    uiLength = min(len(pData), pExampleList.uiBufferSize - pExampleList.uiBytesQueued)
    if uiLength == 0:
        return 0
    pRing = memoryview(pExampleList.pCircularBuffer)
    uiStop = pExampleList.uiStopIndex
    uiFirst = min(uiLength, pExampleList.uiBufferSize - uiStop)
    pRing[uiStop:uiStop + uiFirst] = pData[:uiFirst]
    if uiFirst < uiLength:
        pRing[:uiLength - uiFirst] = pData[uiFirst:uiLength]
    pExampleList.uiStopIndex = (uiStop + uiLength) % pExampleList.uiBufferSize
    pExampleList.uiBytesQueued += uiLength
    return uiLength


def Example_ReadData(pExampleList, pBuffer, uiLength):
    """Move up to `uiLength` queued bytes into `pBuffer`; how many moved."""
    uiLength = min(uiLength, pExampleList.uiBytesQueued)
    if uiLength == 0:
        return 0
    pRing = memoryview(pExampleList.pCircularBuffer)
    pBuffer = memoryview(pBuffer)          # a straight memcpy (bytearray slice assignment copies twice)
    uiStart = pExampleList.uiStartIndex
    uiFirst = min(uiLength, pExampleList.uiBufferSize - uiStart)
    pBuffer[:uiFirst] = pRing[uiStart:uiStart + uiFirst]
    if uiFirst < uiLength:
        pBuffer[uiFirst:uiLength] = pRing[:uiLength - uiFirst]
    pExampleList.uiBytesQueued -= uiLength
    pExampleList.uiStartIndex = (uiStart + uiLength) % pExampleList.uiBufferSize if pExampleList.uiBytesQueued else 0
    if not pExampleList.uiBytesQueued:
        pExampleList.uiStopIndex = 0     # empty: start over at the front, so reads copy in one piece
    return uiLength


def Example_FillFromPendingWrites(pExampleList):
    """Let the oldest pending writes into the room the ring has now; the ones
    now wholly stored (their cancel routines cleared), to complete once the
    lock is released."""
    pStored = []
    while pExampleList.PendingWrites and pExampleList.uiBytesQueued < pExampleList.uiBufferSize:
        pWriteIrp = pExampleList.PendingWrites[0]
        if pWriteIrp.Cancel:
            pExampleList.PendingWrites.pop(0)   # being cancelled: Example_CancelPending completes it
            continue
        pContext = pWriteIrp.Tail.Overlay.DriverContext
        uiLength = IoGetCurrentIrpStackLocation(pWriteIrp).Parameters.Write.Length
        pData = memoryview(pWriteIrp.AssociatedIrp.SystemBuffer)[pContext[0]:uiLength]
        pContext[0] += Example_WriteData(pExampleList, pData)
        if pContext[0] < uiLength:
            break                       # the ring is full again
        pExampleList.PendingWrites.pop(0)
        if IoSetCancelRoutine(pWriteIrp, NULL) is not None:
            pWriteIrp.IoStatus.Status = STATUS_SUCCESS
            pWriteIrp.IoStatus.Information = uiLength
            pStored.append(pWriteIrp)
        # else IoCancelIrp has it: Example_CancelPending completes it
    return pStored


def Example_CompleteAll(pIrps):
    for pIrp in pIrps:
        IoCompleteRequest(pIrp, IO_NO_INCREMENT)


# -- resource contexts ---------------------------------------------------------------

def Example_CreateNewResource(usPipeName):
    """A new EXAMPLE_LIST for `usPipeName` with an empty ring, or None."""
    pExampleList = ExAllocatePoolWithTag(NonPagedPool, sizeof(EXAMPLE_LIST), EXAMPLE_POOL_TAG)
    if not pExampleList:
        return None
    pCircularBuffer = ExAllocatePoolWithTag(NonPagedPool, EXAMPLE_DEFAULT_BUFFER_SIZE, EXAMPLE_POOL_TAG)
    if not pCircularBuffer:
        ExFreePoolWithTag(pExampleList, EXAMPLE_POOL_TAG)
        return None
    pExampleList.pNext = NULL
    pExampleList.usPipeName = RtlInitUnicodeString(usPipeName)
    pExampleList.uiRefCount = 1
    pExampleList.kInstanceBufferMutex = KMUTEX()
    KeInitializeMutex(pExampleList.kInstanceBufferMutex, 0)
    pExampleList.pCircularBuffer = pCircularBuffer
    pExampleList.uiBufferSize = EXAMPLE_DEFAULT_BUFFER_SIZE
    pExampleList.uiStartIndex = 0
    pExampleList.uiStopIndex = 0
    pExampleList.uiBytesQueued = 0
    pExampleList.PendingReads = []
    pExampleList.PendingWrites = []
    return pExampleList


def Example_FreeResource(pExampleList):
    ExFreePoolWithTag(pExampleList.pCircularBuffer, EXAMPLE_POOL_TAG)
    pExampleList.pCircularBuffer = NULL
    ExFreePoolWithTag(pExampleList, EXAMPLE_POOL_TAG)


def Example_FindResource(pExampleDeviceContext, usPipeName):
    """The context named `usPipeName` (case-insensitive), or None.  kListMutex held."""
    pExampleList = pExampleDeviceContext.pExampleList
    while pExampleList:
        if RtlCompareUnicodeString(pExampleList.usPipeName, usPipeName, TRUE) == 0:
            return pExampleList
        pExampleList = pExampleList.pNext
    return None


def Example_CountResources(pExampleDeviceContext):
    uiCount, pExampleList = 0, pExampleDeviceContext.pExampleList
    while pExampleList:
        uiCount += 1
        pExampleList = pExampleList.pNext
    return uiCount


# -- dispatch routines ----------------------------------------------------------------

def Example_CompleteIrp(Irp, NtStatus, uiInformation=0):
    Irp.IoStatus.Status = NtStatus
    Irp.IoStatus.Information = uiInformation
    IoCompleteRequest(Irp, IO_NO_INCREMENT)
    return NtStatus


def Example_Create(DeviceObject, Irp):
    pIoStackIrp = IoGetCurrentIrpStackLocation(Irp)
    pFileObject = pIoStackIrp.FileObject
    pExampleDeviceContext = DeviceObject.DeviceExtension
    DbgPrint(f"Example_Create Called {pFileObject.FileName!r}\r\n")
    if not pFileObject.FileName.strip("\\"):
        # the device itself: there is no pipe to attach the handle to
        return Example_CompleteIrp(Irp, STATUS_OBJECT_NAME_INVALID)
    NtStatus = Example_WaitForMutex(pExampleDeviceContext.kListMutex, TimeOut)
    if NtStatus == STATUS_SUCCESS:
        pExampleList = Example_FindResource(pExampleDeviceContext, pFileObject.FileName)
        if pExampleList:
            pExampleList.uiRefCount += 1
        else:
            pExampleList = Example_CreateNewResource(pFileObject.FileName)
            if pExampleList:
                pExampleList.pNext = pExampleDeviceContext.pExampleList
                pExampleDeviceContext.pExampleList = pExampleList
            else:
                NtStatus = STATUS_INSUFFICIENT_RESOURCES
        if pExampleList:
            pFileObject.FsContext = pExampleList
            pFileObject.FsContext2 = 0          # this handle's EXAMPLE_* flags
            pFileObject.PrivateCacheMap = 1     # (PVOID)1, as NPFS sets it: the I/O manager calls our fast I/O
        KeReleaseMutex(pExampleDeviceContext.kListMutex, FALSE)
    return Example_CompleteIrp(Irp, NtStatus)


def Example_Close(DeviceObject, Irp):
    """The last reference to the file object is gone: drop the context's."""
    pFileObject = IoGetCurrentIrpStackLocation(Irp).FileObject
    pExampleDeviceContext = DeviceObject.DeviceExtension
    pExampleList = pFileObject.FsContext
    DbgPrint(f"Example_Close Called {pFileObject.FileName!r}\r\n")
    Example_AcquireMutex(pExampleDeviceContext.kListMutex)
    pExampleList.uiRefCount -= 1
    if pExampleList.uiRefCount == 0:
        if pExampleDeviceContext.pExampleList is pExampleList:
            pExampleDeviceContext.pExampleList = pExampleList.pNext
        else:
            pPrevious = pExampleDeviceContext.pExampleList
            while pPrevious.pNext is not pExampleList:
                pPrevious = pPrevious.pNext
            pPrevious.pNext = pExampleList.pNext
        Example_FreeResource(pExampleList)
    KeReleaseMutex(pExampleDeviceContext.kListMutex, FALSE)
    pFileObject.FsContext = NULL
    return Example_CompleteIrp(Irp, STATUS_SUCCESS)


def Example_Cleanup(DeviceObject, Irp):
    """The last handle is closed (in the closing program's context): its
    pending reads end now; IRP_MJ_CLOSE follows once they have."""
    pFileObject = IoGetCurrentIrpStackLocation(Irp).FileObject
    pExampleList = pFileObject.FsContext
    Example_AcquireMutex(pExampleList.kInstanceBufferMutex)
    pCancelled = []
    for pPending in (pExampleList.PendingReads, pExampleList.PendingWrites):
        for pIrp in list(pPending):
            if IoGetCurrentIrpStackLocation(pIrp).FileObject is pFileObject:
                pPending.remove(pIrp)
                if IoSetCancelRoutine(pIrp, NULL) is not None:
                    pCancelled.append(pIrp)
                # else IoCancelIrp has it: its cancel routine completes it
    # a write that went with them may leave room for the next one's data
    pStored = Example_FillFromPendingWrites(pExampleList)
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    for pIrp in pCancelled:
        Example_CompleteIrp(pIrp, STATUS_CANCELLED, Example_StoredSoFar(pIrp))
    Example_CompleteAll(pStored)
    return Example_CompleteIrp(Irp, STATUS_SUCCESS)


def Example_StoredSoFar(Irp):
    """Information for a cancelled IRP: the bytes of a write already stored
    (they stay queued), none for a read."""
    if IoGetCurrentIrpStackLocation(Irp).MajorFunction == IRP_MJ_WRITE:
        return Irp.Tail.Overlay.DriverContext[0]
    return 0


def Example_CancelPending(DeviceObject, Irp):
    """The cancel routine of a pending read or write: off its list, and a
    write that goes may leave room for the next one's data."""
    IoReleaseCancelSpinLock(Irp.CancelIrql)
    pExampleList = IoGetCurrentIrpStackLocation(Irp).FileObject.FsContext
    Example_AcquireMutex(pExampleList.kInstanceBufferMutex)
    for pPending in (pExampleList.PendingReads, pExampleList.PendingWrites):
        if Irp in pPending:
            pPending.remove(Irp)
    pStored = Example_FillFromPendingWrites(pExampleList)
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    Example_CompleteIrp(Irp, STATUS_CANCELLED, Example_StoredSoFar(Irp))
    Example_CompleteAll(pStored)


def Example_ReadQueued(pExampleList, pBuffer, uiLength):
    """Read up to `uiLength` queued bytes into `pBuffer`, letting pending writes
    into the room this makes (and taking their data too while the buffer has
    room); (bytes read, writes now wholly stored, to complete once the lock is
    released).  kInstanceBufferMutex held."""
    uiRead = Example_ReadData(pExampleList, pBuffer, uiLength)
    pStored = []
    while pExampleList.PendingWrites:
        pStored += Example_FillFromPendingWrites(pExampleList)
        if uiRead == uiLength or not pExampleList.uiBytesQueued:
            break
        uiRead += Example_ReadData(pExampleList, memoryview(pBuffer)[uiRead:], uiLength - uiRead)
    return uiRead, pStored


def Example_Store(pExampleList, pData):
    """Give `pData` to the oldest pending reads, and store what fits of the rest
    unless writes are already waiting for room (none overtakes them); (bytes
    taken, reads now satisfied, to complete once the lock is released).
    kInstanceBufferMutex held."""
    uiLength = len(pData)
    uiWritten = 0
    pSatisfied = []
    while uiWritten < uiLength and pExampleList.PendingReads:
        pReadIrp = pExampleList.PendingReads.pop(0)
        if IoSetCancelRoutine(pReadIrp, NULL) is None:
            continue        # IoCancelIrp has it: Example_CancelPending completes it
        uiPart = min(uiLength - uiWritten, IoGetCurrentIrpStackLocation(pReadIrp).Parameters.Read.Length)
        memoryview(pReadIrp.AssociatedIrp.SystemBuffer)[:uiPart] = pData[uiWritten:uiWritten + uiPart]
        pReadIrp.IoStatus.Status = STATUS_SUCCESS
        pReadIrp.IoStatus.Information = uiPart
        pSatisfied.append(pReadIrp)
        uiWritten += uiPart
    if uiWritten < uiLength and not pExampleList.PendingWrites:
        uiWritten += Example_WriteData(pExampleList, pData[uiWritten:] if uiWritten else pData)
    return uiWritten, pSatisfied


def Example_Read(DeviceObject, Irp):
    pIoStackIrp = IoGetCurrentIrpStackLocation(Irp)
    pFileObject = pIoStackIrp.FileObject
    pExampleList = pFileObject.FsContext
    uiLength = pIoStackIrp.Parameters.Read.Length
    if uiLength == 0:
        return Example_CompleteIrp(Irp, STATUS_SUCCESS, 0)
    NtStatus = Example_WaitForMutex(pExampleList.kInstanceBufferMutex, TimeOut)
    if NtStatus != STATUS_SUCCESS:
        return Example_CompleteIrp(Irp, NtStatus)
    if pExampleList.uiBytesQueued or not pFileObject.FsContext2 & EXAMPLE_BLOCKING_READS:
        uiRead, pStored = Example_ReadQueued(pExampleList, Irp.AssociatedIrp.SystemBuffer, uiLength)
        KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
        Example_CompleteAll(pStored)
        return Example_CompleteIrp(Irp, STATUS_SUCCESS, uiRead)
    # a blocking read of an empty ring waits, behind any read already waiting
    IoMarkIrpPending(Irp)
    IoSetCancelRoutine(Irp, Example_CancelPending)
    if Irp.Cancel and IoSetCancelRoutine(Irp, NULL) is not None:
        KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
        Example_CompleteIrp(Irp, STATUS_CANCELLED)
        return STATUS_PENDING
    pExampleList.PendingReads.append(Irp)
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    return STATUS_PENDING


def Example_Write(DeviceObject, Irp):
    pIoStackIrp = IoGetCurrentIrpStackLocation(Irp)
    pExampleList = pIoStackIrp.FileObject.FsContext
    uiLength = pIoStackIrp.Parameters.Write.Length
    if uiLength == 0:
        return Example_CompleteIrp(Irp, STATUS_SUCCESS, 0)
    pData = memoryview(Irp.AssociatedIrp.SystemBuffer)[:uiLength]
    NtStatus = Example_WaitForMutex(pExampleList.kInstanceBufferMutex, TimeOut)
    if NtStatus != STATUS_SUCCESS:
        return Example_CompleteIrp(Irp, NtStatus)
    uiWritten, pSatisfied = Example_Store(pExampleList, pData)
    if uiWritten < uiLength and pIoStackIrp.FileObject.FsContext2 & EXAMPLE_BLOCKING_WRITES:
        # the rest waits for room, behind any write already waiting
        Irp.Tail.Overlay.DriverContext[0] = uiWritten
        IoMarkIrpPending(Irp)
        IoSetCancelRoutine(Irp, Example_CancelPending)
        if Irp.Cancel and IoSetCancelRoutine(Irp, NULL) is not None:
            KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
            Example_CompleteAll(pSatisfied)
            Example_CompleteIrp(Irp, STATUS_CANCELLED, uiWritten)
            return STATUS_PENDING
        pExampleList.PendingWrites.append(Irp)
        KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
        Example_CompleteAll(pSatisfied)
        return STATUS_PENDING
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    # the writer hears first: the readers' data is already in their buffers
    Example_CompleteIrp(Irp, STATUS_SUCCESS, uiWritten)
    Example_CompleteAll(pSatisfied)
    return STATUS_SUCCESS


# -- fast I/O: the same reads and writes without an IRP, when nothing has to wait ----

def Example_FastIoRead(FileObject, FileOffset, Length, Wait, LockKey, Buffer, IoStatus, DeviceObject):
    """A read that can be answered now: queued bytes, or none on a handle that
    does not block.  FALSE, having done nothing, when the read has to wait
    (Example_Read pends its IRP) or the lock is not to be had."""
    pExampleList = FileObject.FsContext
    if Length == 0:
        return Example_FastDone(IoStatus, 0)
    if not Example_TryMutex(pExampleList.kInstanceBufferMutex, Wait):
        return FALSE
    if not pExampleList.uiBytesQueued and FileObject.FsContext2 & EXAMPLE_BLOCKING_READS:
        KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
        return FALSE
    uiRead, pStored = Example_ReadQueued(pExampleList, Buffer, Length)
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    Example_CompleteAll(pStored)
    return Example_FastDone(IoStatus, uiRead)


def Example_FastIoWrite(FileObject, FileOffset, Length, Wait, LockKey, Buffer, IoStatus, DeviceObject):
    """A write that can be answered now: on a handle whose writes block, one
    that fits whole with no write waiting before it; on any other, what fits.
    FALSE, having done nothing, otherwise (Example_Write pends its IRP)."""
    pExampleList = FileObject.FsContext
    if Length == 0:
        return Example_FastDone(IoStatus, 0)
    if not Example_TryMutex(pExampleList.kInstanceBufferMutex, Wait):
        return FALSE
    if FileObject.FsContext2 & EXAMPLE_BLOCKING_WRITES and (
            pExampleList.PendingWrites or pExampleList.uiBufferSize - pExampleList.uiBytesQueued < Length):
        KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
        return FALSE
    uiWritten, pSatisfied = Example_Store(pExampleList, memoryview(Buffer)[:Length])
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    Example_CompleteAll(pSatisfied)
    return Example_FastDone(IoStatus, uiWritten)


def Example_TryMutex(pMutex, Wait):
    """Own `pMutex` for a fast I/O routine: waiting as a dispatch routine does
    when the caller allows it, not at all otherwise."""
    return Example_WaitForMutex(pMutex, TimeOut if Wait else NoWait) == STATUS_SUCCESS


def Example_FastDone(IoStatus, uiInformation):
    IoStatus.Status = STATUS_SUCCESS
    IoStatus.Information = uiInformation
    return TRUE


def Example_SetSize(pExampleList, uiNewSize):
    """A ring of `uiNewSize` bytes holding what the old one held."""
    if not 0 < uiNewSize <= EXAMPLE_MAX_BUFFER_SIZE:
        return STATUS_INVALID_PARAMETER
    NtStatus = Example_WaitForMutex(pExampleList.kInstanceBufferMutex, TimeOut)
    if NtStatus != STATUS_SUCCESS:
        return NtStatus
    if pExampleList.uiBytesQueued > uiNewSize:
        NtStatus = STATUS_BUFFER_TOO_SMALL
    elif uiNewSize != pExampleList.uiBufferSize:
        pNewBuffer = ExAllocatePoolWithTag(NonPagedPool, uiNewSize, EXAMPLE_POOL_TAG)
        if not pNewBuffer:
            NtStatus = STATUS_INSUFFICIENT_RESOURCES
        else:
            uiQueued = Example_ReadData(pExampleList, memoryview(pNewBuffer), pExampleList.uiBytesQueued)
            ExFreePoolWithTag(pExampleList.pCircularBuffer, EXAMPLE_POOL_TAG)
            pExampleList.pCircularBuffer = pNewBuffer
            pExampleList.uiBufferSize = uiNewSize
            pExampleList.uiStartIndex = 0
            pExampleList.uiStopIndex = uiQueued % uiNewSize
            pExampleList.uiBytesQueued = uiQueued
    pStored = Example_FillFromPendingWrites(pExampleList)    # a larger ring has room for them
    KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    Example_CompleteAll(pStored)
    return NtStatus


def Example_Query(pExampleDeviceContext, pFileObject, pInput, pInfo):
    """Fill `pInfo` (an EXAMPLE_QUERY_INFORMATION) for this handle's context,
    or for the one `pInput` names."""
    NtStatus = Example_WaitForMutex(pExampleDeviceContext.kListMutex, TimeOut)
    if NtStatus != STATUS_SUCCESS:
        return NtStatus
    pInfo.ContextCount = Example_CountResources(pExampleDeviceContext)
    if pInput:
        usPipeName = bytes(pInput).decode("utf-16-le", "replace")
        if not usPipeName.startswith("\\"):
            usPipeName = "\\" + usPipeName
        pExampleList = Example_FindResource(pExampleDeviceContext, usPipeName)
    else:
        pExampleList = pFileObject.FsContext
        pInfo.Flags = pFileObject.FsContext2
    if pExampleList:
        pInfo.ReferenceCount = pExampleList.uiRefCount
        NtStatus = Example_WaitForMutex(pExampleList.kInstanceBufferMutex, TimeOut)
        if NtStatus == STATUS_SUCCESS:
            pInfo.BufferSize = pExampleList.uiBufferSize
            pInfo.BytesQueued = pExampleList.uiBytesQueued
            pInfo.PendingReads = len(pExampleList.PendingReads)
            pInfo.PendingWrites = len(pExampleList.PendingWrites)
            KeReleaseMutex(pExampleList.kInstanceBufferMutex, FALSE)
    KeReleaseMutex(pExampleDeviceContext.kListMutex, FALSE)
    return NtStatus


def Example_IoControl(DeviceObject, Irp):
    pIoStackIrp = IoGetCurrentIrpStackLocation(Irp)
    pFileObject = pIoStackIrp.FileObject
    uiCode = pIoStackIrp.Parameters.DeviceIoControl.IoControlCode
    uiInLength = pIoStackIrp.Parameters.DeviceIoControl.InputBufferLength
    uiOutLength = pIoStackIrp.Parameters.DeviceIoControl.OutputBufferLength
    pSystemBuffer = Irp.AssociatedIrp.SystemBuffer
    uiInformation = 0
    if uiCode == IOCTL_EXAMPLE_SET_SIZE:
        if uiInLength < sizeof(ULONG):
            NtStatus = STATUS_INVALID_BUFFER_SIZE
        else:
            uiNewSize = ULONG.from_buffer(pSystemBuffer).value
            NtStatus = Example_SetSize(pFileObject.FsContext, uiNewSize)
            DbgPrint(f"Example: {pFileObject.FileName!r} ring size {uiNewSize}: {NtStatus:#x}\r\n")
    elif uiCode == IOCTL_EXAMPLE_QUERY:
        if uiOutLength < sizeof(EXAMPLE_QUERY_INFORMATION):
            NtStatus = STATUS_BUFFER_TOO_SMALL
        else:
            pInfo = EXAMPLE_QUERY_INFORMATION()
            NtStatus = Example_Query(DeviceObject.DeviceExtension, pFileObject,
                                     pSystemBuffer[:uiInLength] if uiInLength else NULL, pInfo)
            if NtStatus == STATUS_SUCCESS:
                pSystemBuffer[:sizeof(pInfo)] = bytes(pInfo)
                uiInformation = sizeof(pInfo)
    elif uiCode == IOCTL_EXAMPLE_SET_BLOCKING:
        if uiInLength < sizeof(ULONG):
            NtStatus = STATUS_INVALID_BUFFER_SIZE
        else:
            uiFlags = ULONG.from_buffer(pSystemBuffer).value
            if uiFlags & ~(EXAMPLE_BLOCKING_READS | EXAMPLE_BLOCKING_WRITES):
                NtStatus = STATUS_INVALID_PARAMETER
            else:
                pFileObject.FsContext2 = uiFlags
                NtStatus = STATUS_SUCCESS
    else:
        NtStatus = STATUS_INVALID_DEVICE_REQUEST
    return Example_CompleteIrp(Irp, NtStatus, uiInformation)


def Example_UnSupportedFunction(DeviceObject, Irp):
    DbgPrint("Example_UnSupportedFunction Called \r\n")
    return Example_CompleteIrp(Irp, STATUS_NOT_SUPPORTED)


# -- load and unload ---------------------------------------------------------------------

def Example_Unload(DriverObject):
    DbgPrint("Example_Unload Called \r\n")
    IoDeleteSymbolicLink(r"\DosDevices\Example")
    IoDeleteDevice(DriverObject.DeviceObject)


def DriverEntry(pDriverObject, pRegistryPath):
    DbgPrint("DriverEntry Called \r\n")
    usDriverName = RtlInitUnicodeString(r"\Device\Example")
    usDosDeviceName = RtlInitUnicodeString(r"\DosDevices\Example")
    NtStatus, pDeviceObject = IoCreateDevice(pDriverObject, sizeof(EXAMPLE_DEVICE_CONTEXT), usDriverName,
                                             FILE_DEVICE_UNKNOWN, FILE_DEVICE_SECURE_OPEN, FALSE)
    if not NT_SUCCESS(NtStatus):
        return NtStatus
    for uiIndex in range(IRP_MJ_MAXIMUM_FUNCTION + 1):
        pDriverObject.MajorFunction[uiIndex] = Example_UnSupportedFunction
    pDriverObject.MajorFunction[IRP_MJ_CREATE] = Example_Create
    pDriverObject.MajorFunction[IRP_MJ_CLEANUP] = Example_Cleanup
    pDriverObject.MajorFunction[IRP_MJ_CLOSE] = Example_Close
    pDriverObject.MajorFunction[IRP_MJ_READ] = Example_Read
    pDriverObject.MajorFunction[IRP_MJ_WRITE] = Example_Write
    pDriverObject.MajorFunction[IRP_MJ_DEVICE_CONTROL] = Example_IoControl
    pDriverObject.DriverUnload = Example_Unload
    pFastIoDispatch = FAST_IO_DISPATCH()
    pFastIoDispatch.SizeOfFastIoDispatch = sizeof(FAST_IO_DISPATCH)
    pFastIoDispatch.FastIoRead = Example_FastIoRead
    pFastIoDispatch.FastIoWrite = Example_FastIoWrite
    pDriverObject.FastIoDispatch = pFastIoDispatch
    pDeviceObject.Flags |= DO_BUFFERED_IO
    pDeviceObject.Flags &= ~DO_DEVICE_INITIALIZING

    # Per-Device Context, User Defined
    pExampleDeviceContext = pDeviceObject.DeviceExtension
    pExampleDeviceContext.kListMutex = KMUTEX()
    KeInitializeMutex(pExampleDeviceContext.kListMutex, 0)
    pExampleDeviceContext.pExampleList = NULL

    NtStatus = IoCreateSymbolicLink(usDosDeviceName, usDriverName)
    if not NT_SUCCESS(NtStatus):
        IoDeleteDevice(pDeviceObject)
    return NtStatus
