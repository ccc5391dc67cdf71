from ._native import *  # noqa
