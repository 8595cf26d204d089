"""The edgesight benchmark suite: `python -m benchmarks run|guard` (also `edgesight bench`).

Every case (task x format x implementation) runs in its own worker process, so load time and
peak resident memory are its own. Cases of one task are timed round-robin (A B C A B C ...), so
machine drift hits them all alike and the *ratios* between them are what the CI guard checks;
absolute times are reported, never asserted.
"""
SCHEMA = "edgesight-bench/1"
