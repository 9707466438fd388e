"""`import pywintypes` in a program that `ringzero run` starts: ringzero.win32.pywintypes itself."""
import sys

from ringzero.win32 import pywintypes

sys.modules[__name__] = pywintypes
