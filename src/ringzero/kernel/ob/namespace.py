"""The object namespace: directories, symbolic links and name lookup.

Names compare case-insensitively, as the object manager does by default.  A
lookup walks components from the root; a symbolic link met on the way is
replaced by its target and the walk starts over (at most `MAX_REPARSE` times);
an object that parses names itself (a device) stops the walk, and what is left
of the path, with its leading backslash, is handed to it (FILE_OBJECT.FileName).
"""

from __future__ import annotations

import threading

from ringzero.kernel.ob.object import ObjectHeader, reference
from ringzero.nt import status as st
from ringzero.nt.strings import upcase

MAX_REPARSE = 32
MAX_PATH_CHARS = 32767

_lock = threading.RLock()


class ObjectError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Directory(ObjectHeader):
    type_name = "Directory"

    def __init__(self, name: str = ""):
        self.name = name
        self.children: dict[str, ObjectHeader] = {}
        self.permanent = True

    def insert(self, obj: ObjectHeader, name: str) -> None:
        key = upcase(name)
        with _lock:
            if key in self.children:
                raise ObjectError(st.STATUS_OBJECT_NAME_COLLISION, f"{self.object_name().rstrip(chr(92))}\\{name} already exists")
            obj.name = name
            obj.parent = self
            self.children[key] = obj

    def remove(self, obj: ObjectHeader) -> None:
        with _lock:
            if self.children.get(upcase(obj.name)) is obj:
                del self.children[upcase(obj.name)]
                obj.parent = None

    def get(self, name: str) -> ObjectHeader | None:
        return self.children.get(upcase(name))

    def entries(self) -> list[ObjectHeader]:
        with _lock:
            return sorted(self.children.values(), key=lambda o: upcase(o.name))


class SymbolicLink(ObjectHeader):
    type_name = "SymbolicLink"

    def __init__(self, target: str):
        self.target = target


class Namespace:
    """Invariant: every named object is reachable from `root` through `children`,
    and its `parent`/`name` say where; unnamed objects have parent None."""

    def __init__(self):
        self.root = Directory("")
        self.root.parent = None
        for d in ("Device", "Driver", "??", "BaseNamedObjects", "ObjectTypes", "Registry", "KernelObjects"):
            self.root.insert(Directory(d), d)
        self.insert(r"\DosDevices", SymbolicLink(r"\??"))
        self.insert(r"\GLOBAL??", SymbolicLink(r"\??"))
        self.insert(r"\??\GLOBALROOT", SymbolicLink(""))
        self.insert(r"\??\Global", SymbolicLink(r"\??"))

    @staticmethod
    def split(path: str) -> list[str]:
        if not path.startswith("\\"):
            raise ObjectError(st.STATUS_OBJECT_PATH_SYNTAX_BAD, f"object name {path!r} does not start with a backslash")
        if len(path) > MAX_PATH_CHARS:
            raise ObjectError(st.STATUS_OBJECT_NAME_INVALID, "object name too long")
        parts = path.split("\\")[1:]
        if parts and parts[-1] == "":
            parts.pop()
        if any(p == "" for p in parts):
            raise ObjectError(st.STATUS_OBJECT_NAME_INVALID, f"object name {path!r} has an empty component")
        return parts

    def insert(self, path: str, obj: ObjectHeader) -> None:
        parts = self.split(path)
        if not parts:
            raise ObjectError(st.STATUS_OBJECT_NAME_INVALID, "cannot name the root")
        with _lock:
            parent, rest = self.lookup("\\" + "\\".join(parts[:-1]), parse=False)
            if rest or not isinstance(parent, Directory):
                raise ObjectError(st.STATUS_OBJECT_PATH_NOT_FOUND, f"{path}: the directory does not exist")
            parent.insert(obj, parts[-1])

    def lookup(self, path: str, parse: bool = True, follow_last: bool = True) -> tuple[ObjectHeader, str]:
        """(object, remaining path).  With `parse`, a parsing object (a device)
        ends the walk and the remainder is returned; otherwise the whole path
        must name an object."""
        for _ in range(MAX_REPARSE):
            parts = self.split(path)
            obj: ObjectHeader = self.root
            with _lock:
                for i, part in enumerate(parts):
                    if isinstance(obj, SymbolicLink):
                        break
                    if parse and getattr(obj, "parses_names", False):
                        return obj, "\\" + "\\".join(parts[i:])
                    if not isinstance(obj, Directory):
                        raise ObjectError(st.STATUS_OBJECT_PATH_NOT_FOUND, f"{path}: {obj.object_name()} is not a directory")
                    child = obj.get(part)
                    if child is None:
                        code = st.STATUS_OBJECT_NAME_NOT_FOUND if i == len(parts) - 1 else st.STATUS_OBJECT_PATH_NOT_FOUND
                        raise ObjectError(code, f"{path}: no object named {part!r}")
                    obj = child
                else:
                    i = len(parts)
                if isinstance(obj, SymbolicLink) and (follow_last or i < len(parts)):
                    rest = parts[i:]
                    target = obj.target or ""
                    path = (target.rstrip("\\") + "\\" + "\\".join(rest)) if rest else (target or "\\")
                    continue
                return obj, ""
        raise ObjectError(st.STATUS_REPARSE_POINT_NOT_RESOLVED if hasattr(st, "STATUS_REPARSE_POINT_NOT_RESOLVED")
                          else st.STATUS_OBJECT_PATH_NOT_FOUND, f"{path}: symbolic links nest too deeply")

    def reference_by_name(self, path: str, type_name: str | None = None) -> ObjectHeader:
        obj, rest = self.lookup(path, parse=False)
        if type_name and obj.type_name != type_name:
            raise ObjectError(st.STATUS_OBJECT_TYPE_MISMATCH, f"{path} is a {obj.type_name}, not a {type_name}")
        return reference(obj)

    def walk(self, start: str = "\\"):
        """(path, object) for `start` and everything below it, directories first."""
        obj, _ = self.lookup(start, parse=False, follow_last=False)
        base = start.rstrip("\\")
        yield (start if start != "" else "\\"), obj
        if isinstance(obj, Directory):
            for child in obj.entries():
                yield from self.walk(f"{base}\\{child.name}")


def dos_to_nt(path: str) -> str:
    """Win32 path forms to NT object names: \\\\.\\X and \\\\?\\X become \\??\\X."""
    if path.startswith(("\\\\.\\", "\\\\?\\", "//./")):
        return "\\??\\" + path[4:].replace("/", "\\") if path.startswith("//./") else "\\??\\" + path[4:]
    if path.startswith("\\??\\") or path.startswith("\\"):
        return path
    raise ObjectError(st.STATUS_OBJECT_PATH_SYNTAX_BAD if hasattr(st, "STATUS_OBJECT_PATH_SYNTAX_BAD") else st.STATUS_OBJECT_NAME_INVALID,
                      f"{path!r} is not a device path (use \\\\.\\NAME)")
