"""`import win32api` in a program that `ringzero run` starts: ringzero.win32.win32api itself."""
import sys

from ringzero.win32 import win32api

sys.modules[__name__] = win32api
