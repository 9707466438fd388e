"""`import winioctlcon` in a program that `ringzero run` starts: ringzero.win32.winioctlcon itself."""
import sys

from ringzero.win32 import winioctlcon

sys.modules[__name__] = winioctlcon
