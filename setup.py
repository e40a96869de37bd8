"""Build janus_fast and its native extension ``janus_fast._C``.

The C++ (CPU) sources under ``csrc/`` are always built. The CUDA sources under ``csrc/cuda/`` are
added when a CUDA toolkit and a CUDA build of torch are present. Switches (environment variables):

* ``FORCE_CUDA=1``: build the CUDA sources even without a visible GPU (needs nvcc and CUDA torch).
* ``FORCE_ONLY_CPU=1``: never build CUDA sources.
* ``JANUS_FAST_NO_EXTENSION=1``: build no extension at all (the package then uses its PyTorch
  reference ops and warns once).
* ``MAX_JOBS``: parallel compile jobs for ninja.
"""

from __future__ import annotations

import glob
import os

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _extensions() -> tuple[list, dict]:
    if _env_flag("JANUS_FAST_NO_EXTENSION"):
        return [], {}
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/cpu/*.cpp"))
    if not sources:
        return [], {}
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    want_cuda = not _env_flag("FORCE_ONLY_CPU") and (
        _env_flag("FORCE_CUDA") or (torch.cuda.is_available() and CUDA_HOME is not None)
    )
    cxx_flags = ["-O3", "-std=c++20", "-fopenmp"]
    include_dirs = [os.path.join(ROOT, "csrc")]
    if want_cuda and cuda_sources and torch.version.cuda is not None:
        extension = CUDAExtension(
            "janus_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "-std=c++20", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        extension = CppExtension(
            "janus_fast._C",
            sources,
            include_dirs=include_dirs,
            extra_compile_args={"cxx": cxx_flags},
            extra_link_args=["-fopenmp"],
        )
    return [extension], {"build_ext": BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()
packages = ["janus_fast", "janus_fast.ops", "janus_fast.benchmarks"]
package_dir = {"janus_fast": "janus_fast"}
if os.path.exists(os.path.join(ROOT, "kernels", "__init__.py")):
    packages.append("janus_fast.kernels")
    package_dir["janus_fast.kernels"] = "kernels"

setup(
    name="janus_fast",
    version="0.1.0",
    description="JANUS joint AR/NAR translation: training and fast mask-predict decoding",
    packages=packages,
    package_dir=package_dir,
    package_data={"janus_fast": ["pretrained/*", "pretrained/**/*"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "sentencepiece>=0.2",
        "sacrebleu>=2.4",
        "safetensors>=0.4",
        "tqdm>=4.60",
        "numpy>=1.24",
    ],
    extras_require={
        "dev": ["pytest>=8", "hypothesis>=6", "ruff>=0.5", "ninja", "pybind11", "matplotlib", "ctranslate2>=4"],
        "triton": ["triton>=3.0"],
        "compare": ["ctranslate2>=4"],
    },
    entry_points={"console_scripts": ["janus-fast=janus_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
