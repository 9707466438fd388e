"""`import win32con` in a program that `ringzero run` starts: ringzero.win32.win32con itself."""
import sys

from ringzero.win32 import win32con

sys.modules[__name__] = win32con
