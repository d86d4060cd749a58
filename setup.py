"""Installs the four packages of vlmret: data_prep, query_generation, retriever, eval."""
from setuptools import find_packages, setup

CORE = [
    "torch>=2.4",
    "transformers>=5.0,<6",
    "tokenizers>=0.21",
    "peft>=0.15",
    "deepspeed>=0.16",
    "h5py>=3.10",
    "datasets>=3.0",
    "pymupdf>=1.24",
    "pillow>=10.0",
    "faiss-cpu>=1.8",
    "mteb>=2.0",
    "pytrec-eval-terrier>=0.5.6",
    "tqdm>=4.66",
    "tensorboard>=2.15",
    "safetensors>=0.4",
    "numpy>=2.0",  # bitwise_count (binary MaxSim popcount)
    "matplotlib>=3.8",
    "pyarrow>=15",
    "scipy>=1.11",
    "pyyaml>=6.0",
    "optuna>=4.9",  # heartbeat_stale_trial_callback
    "pycocoevalcap>=1.2",  # captioning metrics (its tokenizer and METEOR run Java)
    "av>=12",  # PyAV: video clips (data_prep.videos)
    # FastEmbed (MUVERA encodings, retriever.index.muvera) is installed without its pins by shell/venv.sh (they hold
    # huggingface-hub below 2, which transformers 5 needs); these are what its package imports.
    "onnxruntime>=1.17",
    "loguru>=0.7",
    "mmh3>=4.1",
    "py-rust-stemmers>=0.1",
]

EXTRAS = {
    "gpu": ["flash-attn>=2.6", "faiss-gpu-cu12>=1.8", "vllm>=0.8"],
    # triton: the fused MaxSim kernels, tested on CPU in Triton's interpreter (needs >= 3.9 there; no dependencies)
    "dev": ["pytest>=8.0", "pytest-timeout>=2.3", "pytest-xdist>=3.5", "pandas>=2.0", "psutil>=5.9",
            "triton>=3.2; platform_system == 'Linux'"],
    # Reference classes of the published-checkpoint tests. Install it with --no-deps (shell/venv.sh does): its
    # dependencies include torchvision, which breaks the pinned torch. The tests skip without it.
    "colpali": ["colpali-engine>=0.3.18"],
    "fastembed": ["fastembed>=0.7"],
    "wandb": ["wandb>=0.17"],
}

setup(
    name="vlmret",
    version="0.1.0",
    description="Train and evaluate vision-language models as visual document retrievers "
    "(dense and multi-vector), with exact GradCache under DDP and DeepSpeed ZeRO.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["data_prep*", "query_generation*", "retriever*", "eval*"]),
    package_data={"query_generation": ["prompts/*.txt"]},
    install_requires=CORE,
    extras_require=EXTRAS,
)
