"""Command-line flags of the generation backends, shared by ``generate`` (the generator) and ``filter`` (the
judge), and their translation into :class:`GeneratorOptions`. ``prefix`` namespaces them (``--judge_...``)."""
from __future__ import annotations

import argparse

from data_prep.flags import non_negative_int, positive_float, positive_int
from query_generation.generators import GeneratorOptions
from retriever.model.dtype import AUTO, add_dtype_argument


def add_generator_arguments(ap: argparse.ArgumentParser, prefix: str = "") -> None:
    local = ap.add_argument_group(f"{prefix}transformers and vllm backends")
    add_dtype_argument(local, AUTO, "model weights dtype (default auto: the checkpoint's own)",
                       flag=f"--{prefix}dtype")
    local.add_argument(f"--{prefix}device", help="transformers: torch device (default cuda when available, else cpu)")
    local.add_argument(f"--{prefix}trust_remote_code", action="store_true",
                       help="run Python code shipped with the checkpoint (auto_map); without it such a checkpoint is "
                       "refused, never run")
    local.add_argument(f"--{prefix}tensor_parallel_size", type=positive_int, default=1,
                       help="vllm: GPUs per engine (default 1)")
    local.add_argument(f"--{prefix}max_model_len", type=positive_int,
                       help="vllm: context length cap (default: the model's)")
    local.add_argument(f"--{prefix}gpu_memory_utilization", type=float, default=0.9,
                       help="vllm: share of GPU memory for the engine (default 0.9)")
    remote = ap.add_argument_group(f"{prefix}openai backend (any OpenAI-compatible chat-completions server)")
    remote.add_argument(f"--{prefix}base_url", help="server URL up to /v1, e.g. http://localhost:8000/v1")
    remote.add_argument(f"--{prefix}api_key_env", help="environment variable holding the API key (Bearer token)")
    remote.add_argument(f"--{prefix}concurrency", type=positive_int, default=8, help="requests in flight (default 8)")
    remote.add_argument(f"--{prefix}max_retries", type=non_negative_int, default=5,
                        help="retries on 429/5xx/timeouts/connection errors, exponential backoff (default 5)")
    remote.add_argument(f"--{prefix}request_timeout", type=positive_float, default=120.0,
                        help="seconds per request (default 120)")


def generator_options(args: argparse.Namespace, prefix: str = "") -> GeneratorOptions:
    def get(name: str):
        return getattr(args, prefix + name)

    return GeneratorOptions(device=get("device"), dtype=get("dtype"), trust_remote_code=get("trust_remote_code"),
                            tensor_parallel_size=get("tensor_parallel_size"), max_model_len=get("max_model_len"),
                            gpu_memory_utilization=get("gpu_memory_utilization"), base_url=get("base_url"),
                            api_key_env=get("api_key_env"), concurrency=get("concurrency"),
                            max_retries=get("max_retries"), request_timeout=get("request_timeout"))
