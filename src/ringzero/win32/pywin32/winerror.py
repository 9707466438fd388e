"""`import winerror` in a program that `ringzero run` starts: ringzero.win32.winerror itself."""
import sys

from ringzero.win32 import winerror

sys.modules[__name__] = winerror
