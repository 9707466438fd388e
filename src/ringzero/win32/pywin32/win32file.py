"""`import win32file` in a program that `ringzero run` starts: ringzero.win32.win32file itself."""
import sys

from ringzero.win32 import win32file

sys.modules[__name__] = win32file
