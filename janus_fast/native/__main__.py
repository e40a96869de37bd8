"""``python -m janus_fast.native``: build ``janus_fast._C`` now if needed and say what decoding will
run: the library used, the instruction set of the native passes, or why the PyTorch reference ops
run instead (``JANUS_FAST_FORCE_REFERENCE``). Exit status 1 when the library cannot be used or an
environment variable it reads is wrong."""

import argparse
import sys

from janus_fast.native.loader import main


def run(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m janus_fast.native", description=__doc__).parse_args(argv)
    status = main()
    if status != 0:
        return status
    from janus_fast.native.decoder import cpu_isa, native_decoder_available
    from janus_fast.ops import env_flag, uses_native_ops

    try:
        if not uses_native_ops():
            if env_flag("JANUS_FAST_FORCE_REFERENCE"):
                print("JANUS_FAST_FORCE_REFERENCE is set: decoding runs the PyTorch reference ops, not this library")
                return 0
            print(
                "the library loaded but registers none of janus_fast's ops (another build's file in the cache?): "
                "decoding runs the PyTorch reference ops; delete the cache folder above and run this again",
                file=sys.stderr,
            )
            return 1
        isa = cpu_isa() if native_decoder_available() else "none (the library has no decoder ops)"
    except ValueError as error:  # JANUS_FAST_ISA, JANUS_FAST_FORCE_REFERENCE set to what no run accepts
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"native CPU passes: {isa} instructions")
    return 0


sys.exit(run())
