"""Speed and memory of mfutils' fast paths, reported as ratios against their plain twins in one run.

``python -m benchmarks.run [--quick] [--out benchmarks/RESULTS.md]``: see ``benchmarks/run.py``.
``python -m benchmarks.gpu_llava_sweep``: the knockout sweep on a randomly initialised full-size
LLaVA-1.5-7B on a GPU.
"""
