"""Object namespace lookups: links, the \\\\.\\ prefix, the device remainder."""

import pytest

from ringzero.kernel.io.objects import DEVICE_OBJECT, DRIVER_OBJECT
from ringzero.kernel.ob.namespace import Namespace, ObjectError, SymbolicLink, dos_to_nt
from ringzero.nt import status as st


@pytest.fixture
def ns():
    n = Namespace()
    dev = DEVICE_OBJECT(DRIVER_OBJECT("X"), 0, 0x22, 0, False)
    n.insert(r"\Device\Example", dev)
    n.insert(r"\??\Example", SymbolicLink(r"\Device\Example"))
    return n, dev


def test_dos_name_through_link_to_device_with_remainder(ns):
    n, dev = ns
    assert n.lookup(dos_to_nt(r"\\.\Example\HELLO")) == (dev, r"\HELLO")
    assert n.lookup(dos_to_nt(r"\\.\example")) == (dev, "")       # case-insensitive
    assert n.lookup(r"\DosDevices\Example\a\b") == (dev, r"\a\b")  # \DosDevices -> \??
    assert n.lookup(r"\??\GLOBALROOT\Device\Example") == (dev, "")


def test_missing_names(ns):
    n, _ = ns
    with pytest.raises(ObjectError) as e:
        n.lookup(r"\??\Nope")
    assert e.value.status == st.STATUS_OBJECT_NAME_NOT_FOUND
    with pytest.raises(ObjectError) as e:
        n.lookup(r"\Nope\Deeper")
    assert e.value.status == st.STATUS_OBJECT_PATH_NOT_FOUND
    with pytest.raises(ObjectError) as e:
        n.insert(r"\Device\example", DEVICE_OBJECT(DRIVER_OBJECT("Y"), 0, 0x22, 0, False))
    assert e.value.status == st.STATUS_OBJECT_NAME_COLLISION


def test_link_loops_are_bounded(ns):
    n, _ = ns
    n.insert(r"\??\A", SymbolicLink(r"\??\B"))
    n.insert(r"\??\B", SymbolicLink(r"\??\A"))
    with pytest.raises(ObjectError):
        n.lookup(r"\??\A")


def test_not_a_device_path():
    with pytest.raises(ObjectError):
        dos_to_nt("C:relative")
