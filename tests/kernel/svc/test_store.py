"""The service database: registry-shaped keys and values in SQLite, and what
happens to a database that is damaged or not ours (reported, never reset)."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as hs

from ringzero.kernel.svc import store as sto
from ringzero.kernel.svc.store import Store, StoreError
from ringzero.nt import registry as reg

SERVICES = "\\Registry\\Machine\\System\\CurrentControlSet\\Services"


def test_keys_are_created_with_their_parents_and_compared_without_case(tmp_path):
    s = Store.open(str(tmp_path))
    assert s.create_key(SERVICES + "\\Beep\\Parameters")
    assert not s.create_key(SERVICES.upper() + "\\BEEP\\parameters")
    assert s.key_path(SERVICES + "\\beep") == SERVICES + "\\Beep"
    assert s.subkeys(SERVICES) == ["Beep"]
    assert s.subkeys(SERVICES + "\\Beep") == ["Parameters"]
    assert s.key_exists("\\Registry\\Machine\\System")


def test_values_hold_registry_bytes(tmp_path):
    s = Store.open(str(tmp_path))
    key = SERVICES + "\\Beep"
    s.create_key(key)
    s.put(key, "ImagePath", reg.REG_EXPAND_SZ, "/x/beep.py")
    s.put(key, "Start", reg.REG_DWORD, 3)
    s.put(key, "DependOnService", reg.REG_MULTI_SZ, ["A", "B"])
    assert s.get_value(key, "imagepath") == ("ImagePath", reg.REG_EXPAND_SZ, "/x/beep.py\0".encode("utf-16-le"))
    assert s.get_value(key, "Start")[2] == b"\x03\0\0\0"
    assert s.get_value(key, "DependOnService")[2] == "A\0B\0\0".encode("utf-16-le")
    assert s.get(key, "DependOnService") == ["A", "B"]
    s.put(key, "Start", reg.REG_DWORD, 2)
    assert s.get(key, "START") == 2
    assert [n for n, _, _ in s.values(key)] == ["ImagePath", "Start", "DependOnService"]
    assert s.delete_value(key, "start") and s.get(key, "Start") is None


def test_deleting_a_key_deletes_its_subtree_and_values_but_not_its_siblings(tmp_path):
    s = Store.open(str(tmp_path))
    for name in ("Beep", "Beep2", "Be_p"):
        s.create_key(SERVICES + f"\\{name}\\Parameters")
        s.put(SERVICES + f"\\{name}\\Parameters", "X", reg.REG_DWORD, 1)
    s.delete_tree(SERVICES + "\\Be_p")
    assert s.subkeys(SERVICES) == ["Beep", "Beep2"]
    assert s.get(SERVICES + "\\Beep\\Parameters", "X") == 1


def test_what_is_written_survives_reopening(tmp_path):
    s = Store.open(str(tmp_path))
    s.create_key(SERVICES + "\\Beep")
    s.put(SERVICES + "\\Beep", "DisplayName", reg.REG_SZ, "Beep driver")
    s.close()
    assert Store.open(str(tmp_path)).get(SERVICES + "\\Beep", "DisplayName") == "Beep driver"


@given(hs.text(alphabet=hs.characters(blacklist_characters="\0", blacklist_categories=("Cs",))))
def test_strings_round_trip(text):
    assert sto.decode(reg.REG_SZ, sto.encode(reg.REG_SZ, text)) == text


@given(hs.integers(min_value=0, max_value=0xFFFFFFFF))
def test_dwords_round_trip(n):
    assert sto.decode(reg.REG_DWORD, sto.encode(reg.REG_DWORD, n)) == n


def _database(tmp_path) -> str:
    return os.path.join(str(tmp_path), sto.FILE_NAME)


def test_a_file_that_is_not_a_database_is_reported_and_left_alone(tmp_path):
    path = _database(tmp_path)
    garbage = b"this is not an SQLite database at all\n" * 100
    with open(path, "wb") as f:
        f.write(garbage)
    with pytest.raises(StoreError, match="damaged or is not a ringzero database") as e:
        Store.open(str(tmp_path))
    assert path in str(e.value)
    assert open(path, "rb").read() == garbage


def test_a_database_of_another_program_is_reported_and_left_alone(tmp_path):
    path = _database(tmp_path)
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE songs (title TEXT)")
    db.commit()
    db.close()
    before = open(path, "rb").read()
    with pytest.raises(StoreError, match="missing tables"):
        Store.open(str(tmp_path))
    assert open(path, "rb").read() == before


def test_a_creation_cut_short_is_started_over(tmp_path):
    """A kernel killed while it created the database leaves either nothing or
    a database file without a single table (the creation is one transaction);
    the next kernel creates it anew instead of calling it damaged."""
    os.makedirs(tmp_path, exist_ok=True)
    db = sqlite3.connect(_database(tmp_path))
    db.execute("PRAGMA user_version = 0")
    db.execute("CREATE TABLE t (x)")
    db.execute("DROP TABLE t")          # a valid SQLite file with pages, and no table
    db.commit()
    db.close()
    assert os.path.getsize(_database(tmp_path)) > 0
    s = Store.open(str(tmp_path))
    s.create_key(SERVICES + "\\Echo")
    s.close()
    assert Store.open(str(tmp_path)).key_exists(SERVICES + "\\Echo")


def test_a_damaged_database_is_reported_and_left_alone(tmp_path):
    s = Store.open(str(tmp_path))
    for i in range(300):
        s.create_key(SERVICES + f"\\Service{i}")
        s.put(SERVICES + f"\\Service{i}", "ImagePath", reg.REG_EXPAND_SZ, "x" * 200)
    s.close()
    path = _database(tmp_path)
    data = bytearray(open(path, "rb").read())
    data[4096:4096 * 3] = b"\xff" * (4096 * 2)    # scribble over two pages after the header
    open(path, "wb").write(data)
    with pytest.raises(StoreError, match="damaged"):
        Store.open(str(tmp_path))
    assert open(path, "rb").read() == bytes(data)


def test_the_kernel_refuses_to_start_on_a_corrupt_database_and_says_why(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    path = state / sto.FILE_NAME
    path.write_bytes(b"\0garbage" * 512)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    r = subprocess.run([sys.executable, "-m", "ringzero.kernel", "--socket", str(tmp_path / "k.sock"),
                        "--state", str(state)], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0
    assert str(path) in r.stderr and "damaged or is not a ringzero database" in r.stderr
    assert "left exactly as it is" in r.stderr
    assert path.read_bytes() == b"\0garbage" * 512
