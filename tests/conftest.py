"""Test settings: one thread everywhere, no network, and tiny real models built once per session."""
import os

# Set before any backend is imported: 2-thread OpenMP collapses when anything else runs.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("EDGESIGHT_THREADS", "1")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("EDGESIGHT_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
