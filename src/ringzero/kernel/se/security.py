"""Security descriptors and access checks against a program's Linux identity.

A descriptor is a small DACL of (allow, access mask, trustee) entries; trustees
are `SY`/`BA` (administrators: root and the kernel's own user), `WD`
(everyone), `U:<uid>` and `G:<gid>`.  `from_sddl` reads the SDDL subset drivers
pass to IoCreateDeviceSecure.  A device with no descriptor gets NT's default
for named devices: everyone may read, write and execute; administrators all.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ringzero.nt import access as acc
from ringzero.nt import status as st


@dataclass(slots=True)
class Ace:
    allow: bool
    mask: int
    trustee: str


@dataclass(slots=True)
class SecurityDescriptor:
    owner_uid: int | None = None
    group_gid: int | None = None
    dacl: list[Ace] | None = field(default=None)   # None: no DACL, everyone allowed

    def sddl(self) -> str:
        if self.dacl is None:
            return "D:NO_ACCESS_CONTROL"
        return "D:P" + "".join(f"({'A' if a.allow else 'D'};;{a.mask:#x};;;{a.trustee})" for a in self.dacl)


_RIGHTS = {"GA": acc.GENERIC_ALL, "GR": acc.GENERIC_READ, "GW": acc.GENERIC_WRITE, "GX": acc.GENERIC_EXECUTE,
           "SD": acc.DELETE, "RC": acc.READ_CONTROL, "WD": acc.WRITE_DAC, "WO": acc.WRITE_OWNER,
           "FA": acc.FILE_ALL_ACCESS, "FR": acc.FILE_GENERIC_READ, "FW": acc.FILE_GENERIC_WRITE,
           "FX": acc.FILE_GENERIC_EXECUTE}


class SddlError(ValueError):
    pass


def from_sddl(sddl: str) -> SecurityDescriptor:
    m = re.fullmatch(r"\s*D:(P?)((?:\([^)]*\))*)\s*", sddl)
    if not m:
        raise SddlError(f"unsupported SDDL {sddl!r}: expected D:P(A;;rights;;;trustee)...")
    aces = []
    for body in re.findall(r"\(([^)]*)\)", m.group(2)):
        parts = body.split(";")
        if len(parts) != 6 or parts[0] not in ("A", "D"):
            raise SddlError(f"unsupported ACE ({body})")
        rights, trustee = parts[2], parts[5]
        if rights.lower().startswith("0x"):
            mask = int(rights, 16)
        else:
            mask = 0
            for i in range(0, len(rights), 2):
                code = rights[i:i + 2]
                if code not in _RIGHTS:
                    raise SddlError(f"unsupported right {code!r} in ({body})")
                mask |= _RIGHTS[code]
        if not (trustee in ("SY", "BA", "WD", "LS", "NS", "AU", "IU") or re.fullmatch(r"[UG]:\d+", trustee)):
            raise SddlError(f"unsupported trustee {trustee!r} in ({body})")
        aces.append(Ace(parts[0] == "A", mask, trustee))
    return SecurityDescriptor(dacl=aces)


def default_device_descriptor() -> SecurityDescriptor:
    return SecurityDescriptor(dacl=[Ace(True, acc.GENERIC_ALL, "SY"), Ace(True, acc.GENERIC_ALL, "BA"),
                                    Ace(True, acc.GENERIC_READ | acc.GENERIC_WRITE | acc.GENERIC_EXECUTE, "WD")])


def _matches(trustee: str, uid: int, gid: int, groups: frozenset, admin: bool) -> bool:
    if trustee in ("WD", "AU", "IU"):
        return True
    if trustee in ("SY", "BA", "LS", "NS"):
        return admin
    kind, _, num = trustee.partition(":")
    return (kind == "U" and int(num) == uid) or (kind == "G" and (int(num) == gid or int(num) in groups))


class AccessDenied(Exception):
    status = st.STATUS_ACCESS_DENIED


def access_check(sd: SecurityDescriptor | None, process, desired: int, mapping: acc.GenericMapping) -> int:
    """The access granted for `desired` (generic bits mapped), or AccessDenied."""
    desired = acc.map_generic(desired, mapping)
    maximum = bool(desired & acc.MAXIMUM_ALLOWED)
    desired &= ~acc.MAXIMUM_ALLOWED
    if sd is None or sd.dacl is None:
        return desired | (mapping.GenericAll if maximum else 0)
    admin = process.is_admin
    granted = denied = 0
    for ace in sd.dacl:
        if not _matches(ace.trustee, process.uid, process.gid, process.groups, admin):
            continue
        mask = acc.map_generic(ace.mask, mapping)
        if ace.allow:
            granted |= mask & ~denied
        else:
            denied |= mask & ~granted
    if maximum:
        if not granted and not desired:
            raise AccessDenied("no access is granted")
        if desired & ~granted:
            raise AccessDenied(f"access {desired & ~granted:#x} is not granted")
        return granted
    if desired & ~granted:
        raise AccessDenied(f"access {desired & ~granted:#x} is not granted")
    return desired
