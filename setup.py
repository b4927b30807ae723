"""Builds the Cython extensions in ext/ into the sensor package.

Compiler directives live here, in one place. DNSSENSOR_DEBUG=1 builds with
-O0 -g and bounds checks on, for gdb and sanitizers.
"""
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

DEBUG = os.environ.get("DNSSENSOR_DEBUG") == "1"

DIRECTIVES = {
    "language_level": 3,
    "boundscheck": DEBUG,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": DEBUG,
    "embedsignature": True,
}
CFLAGS = ["-O0", "-g"] if DEBUG else ["-O3"]

extensions = [
    Extension(
        "sensor._core",
        ["ext/_core.pyx"],
        include_dirs=[numpy.get_include(), "ext"],
        extra_compile_args=CFLAGS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    ),
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, include_path=["ext"]))
