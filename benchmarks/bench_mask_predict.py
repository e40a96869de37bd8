"""Benchmark of the mask-predict step (native op vs PyTorch reference); see janus_fast.ops.benchmark.

    python benchmarks/bench_mask_predict.py [--vocab 8000] [--repeats 5] [--dtype float32] [--threads N]
"""

from janus_fast.ops.benchmark import main

if __name__ == "__main__":
    main()
