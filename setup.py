"""Build janus_fast and its native extension ``janus_fast._C``.

The extension is compiled here only when torch can be imported while building, so that it is built
against the torch that is installed: ``pip install --no-build-isolation .`` (``-e`` too, as
``scripts/setup_env.sh`` does). A plain ``pip install .`` builds in pip's isolated environment
(``[build-system]`` in pyproject.toml: setuptools only, no torch, so no multi-GB torch download and
no build against another torch); the package is then installed with its C++ sources
(``janus_fast/_csrc``) and builds ``janus_fast._C`` against the installed torch on first use, once,
with ninja (``janus_fast/native/build.py``, which also holds the source globs and flags used here).

The C++ (CPU) sources under ``csrc/`` are always built. The CUDA sources under ``csrc/cuda/`` are
added when a CUDA toolkit and a CUDA build of torch are present. Switches (environment variables):

* ``FORCE_CUDA=1``: build the CUDA sources even without a visible GPU (needs nvcc and CUDA torch).
* ``FORCE_ONLY_CPU=1``: never build CUDA sources.
* ``JANUS_FAST_NO_EXTENSION=1``: build no extension here (it is then built on first use, unless
  the variable is also set when janus_fast runs: then the PyTorch reference ops are used).
* ``MAX_JOBS``: parallel compile jobs for ninja.
"""

from __future__ import annotations

import importlib.util
import os
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _load_native_module():
    """janus_fast/native/build.py by path: importing the package would import torch."""
    build_file = os.path.join(ROOT, "janus_fast", "native", "build.py")
    spec = importlib.util.spec_from_file_location("_janus_fast_native", build_file)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


native = _load_native_module()


def _extensions() -> tuple[list, dict]:
    if native.env_flag("JANUS_FAST_NO_EXTENSION"):
        return [], {}
    try:
        import torch
    except ImportError:
        print(
            "janus_fast: torch is not importable in this build environment (pip's isolated build): "
            "installing without a compiled janus_fast._C; it is built against the installed torch on "
            "first use (`pip install --no-build-isolation .` builds it now instead)",
            file=sys.stderr,
        )
        return [], {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    sources = native.extension_sources("csrc", with_cuda=False)
    if not sources:
        return [], {}
    cuda_sources = native.cuda_sources("csrc")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if native.want_cuda(torch, bool(cuda_sources)):
        extension = CUDAExtension(
            "janus_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[(native.CUDA_MACRO, None)],
            extra_compile_args={"cxx": list(native.CXX_FLAGS), "nvcc": list(native.NVCC_FLAGS)},
            extra_link_args=list(native.LINK_FLAGS),
        )
    else:
        extension = CppExtension(
            "janus_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": list(native.CXX_FLAGS)},
            extra_link_args=list(native.LINK_FLAGS),
        )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
# janus_fast._csrc: the C++ sources, installed for the first-use build (janus_fast/native/build.py)
packages = [
    "janus_fast",
    "janus_fast.benchmarks",
    "janus_fast.decoding",
    "janus_fast.fairseq",
    "janus_fast.native",
    "janus_fast.ops",
    "janus_fast.training",
    "janus_fast._csrc",
]
package_dir = {"janus_fast": "janus_fast", "janus_fast._csrc": "csrc"}
if os.path.exists(os.path.join(ROOT, "kernels", "__init__.py")):
    packages.append("janus_fast.kernels")
    package_dir["janus_fast.kernels"] = "kernels"

setup(
    name="janus_fast",
    version="0.1.0",
    description="JANUS joint AR/NAR translation: training and fast mask-predict decoding",
    packages=packages,
    package_dir=package_dir,
    package_data={
        "janus_fast": ["pretrained/*", "pretrained/**/*"],
        "janus_fast._csrc": list(native.PACKAGED_SOURCE_PATTERNS),
    },
    exclude_package_data={"janus_fast._csrc": [f"{name}/*" for name in native.EXCLUDED_SOURCE_DIRS]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "ninja",  # the first-use build of janus_fast._C (janus_fast/native/build.py)
        "filelock",
        "sentencepiece>=0.2",
        "sacrebleu>=2.4",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "numpy>=1.24",
    ],
    extras_require={
        "dev": [
            "pytest>=8",
            "hypothesis>=6",
            "ruff>=0.5",
            "ninja",
            "pybind11",
            "matplotlib",
            "ctranslate2>=4",
            "subword-nmt>=0.3.8",
        ],
        "triton": ["triton>=3.0"],
        "compare": ["ctranslate2>=4"],
        "subword-nmt": ["subword-nmt>=0.3.8"],  # convert --bpe subword-nmt (fairseq models cut with BPE codes)
    },
    entry_points={"console_scripts": ["janus-fast=janus_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
