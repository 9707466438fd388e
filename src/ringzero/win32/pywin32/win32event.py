"""`import win32event` in a program that `ringzero run` starts: ringzero.win32.win32event itself."""
import sys

from ringzero.win32 import win32event

sys.modules[__name__] = win32event
