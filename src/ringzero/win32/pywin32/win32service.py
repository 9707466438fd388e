"""`import win32service` in a program that `ringzero run` starts: ringzero.win32.win32service itself."""
import sys

from ringzero.win32 import win32service

sys.modules[__name__] = win32service
