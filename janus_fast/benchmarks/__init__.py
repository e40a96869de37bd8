"""Benchmarks and profiling, all in one place and on one timer (``timing.median_seconds``).

* ``decoding``: ``janus-fast bench``, reference vs engine, NAR vs AR, speed and BLEU;
* ``ops``: the native ``mask_predict_step`` against its reference and the memory bandwidth;
* ``kernels``: the Triton kernels against PyTorch (GPU);
* ``report``: ``janus-fast profile`` (ops + kernels);
* ``profile_decoding`` / ``profile_training``: torch.profiler breakdowns of decoding and of a
  training update (``python -m janus_fast.benchmarks.profile_training --data-dir DIR``).
"""
