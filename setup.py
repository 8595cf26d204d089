"""edgesight: edge-optimized, quantized inference for four vision-language tasks.

One import namespace, four source folders (see DESIGN), imports one way (run time <- export <- training;
evaluation may use all three): sdk/ -> edgesight, export/ -> edgesight.export,
training/ -> edgesight.training, evaluation/ -> edgesight.evaluation.
"""
from setuptools import setup

TORCH = ["torch==2.13.0"]  # pinned: an unpinned torch pulls gigabytes of CUDA wheels
HF = ["transformers>=4.46,<4.58", "safetensors>=0.4", "peft>=0.13", "sentencepiece>=0.2", "protobuf>=4"]

extras = {
    "gguf": ["llama-cpp-python==0.3.36"],
    "export": TORCH + HF + ["optimum>=2.0", "optimum-onnx[onnxruntime]>=0.1", "onnx>=1.17", "onnx-ir>=0.1",
                                 "efficientnet-lite-pytorch==0.1.0"],  # onnx-ir: int4 MatMulNBitsQuantizer; the image encoder's architecture
    "train": TORCH + HF + ["accelerate>=1.0", "gguf>=0.10"],  # gguf: transformers reads GGUF bases
    "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9", "prometheus-client>=0.20"],  # /metrics
    "ocr": ["rapidocr-onnxruntime==1.4.4"],
    # `edgesight batch --engine ray` (Ray Data actors); its pyarrow is also what reads/writes Parquet batches
    "ray": ["ray[data]==2.60.0"],
    # device="cuda" for ONNX bundles; replaces the CPU onnxruntime (the two wheels share the import name)
    "gpu": ["onnxruntime-gpu>=1.18"],
    "dev": ["pytest>=8", "pytest-timeout>=2.3", "matplotlib>=3.8", "scikit-image>=0.24", "httpx>=0.27", "psutil>=5.9", "build>=1.2", "hypothesis>=6.100",
            "selenium>=4.40"],   # the console's browser tests (Debian's chromium + chromedriver; scripts/setup.sh)
}
extras["all"] = sorted({req for name, reqs in extras.items() if name != "gpu" for req in reqs})

setup(
    name="edgesight",
    version="0.1.0",
    description="Edge-optimized, quantized inference SDK for keyword extraction, descriptions, captioning and product recognition",
    python_requires=">=3.10",
    package_dir={
        "edgesight": "sdk",
        "edgesight.export": "export",
        "edgesight.training": "training",
        "edgesight.evaluation": "evaluation",
    },
    packages=["edgesight", "edgesight.runtime", "edgesight.tasks", "edgesight.export", "edgesight.training",
              "edgesight.training.data", "edgesight.evaluation"],
    package_data={"edgesight": ["data/*", "adapters/*/*", "static/*"]},   # static: the serve console (/ui)
    # faiss-cpu: the product catalogue's index (exact and approximate search, its own serialisation); core, not an
    # extra, because products is a core task and one search path beats a numpy fallback; imported on first search.
    # llguidance: grammar-constrained decoding on the ONNX runtime (GBNF/Lark -> token masks; edgesight.grammar)
    install_requires=["numpy>=1.26", "pillow>=10", "onnxruntime>=1.18", "tokenizers>=0.19", "tqdm>=4.66", "rapidfuzz>=3",
                      "faiss-cpu>=1.8", "llguidance>=1.9"],
    extras_require=extras,
    entry_points={"console_scripts": ["edgesight=edgesight.cli:main"]},
)
