"""Modules shaped like pywin32's, for programs: `from ringzero.win32 import win32file`.

PYWIN32_PATH is a directory of modules named as pywin32's own (win32file,
win32event, win32service, win32api, win32con, winioctlcon, winerror,
pywintypes), each of which is the ringzero module of its name: with it on
PYTHONPATH, as `ringzero run` puts it, a program written for Windows imports
them unchanged.
"""

import os

PYWIN32_PATH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pywin32")
