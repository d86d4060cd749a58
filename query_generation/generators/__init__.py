"""Generation backends behind one interface (:class:`QueryGenerator`): vLLM offline engine, transformers
``generate``, and any OpenAI-compatible chat-completions server. Each is imported only when chosen."""
from __future__ import annotations

from dataclasses import dataclass

from data_prep.errors import InputError

from .base import QueryGenerator, Decoding, Reply, Request, clip

GENERATORS = ("vllm", "transformers", "openai")


@dataclass(frozen=True)
class GeneratorOptions:
    """Settings of the generators; each generator reads the ones it needs."""

    device: str | None = None
    dtype: str = "auto"
    trust_remote_code: bool = False  # transformers and vllm: run the checkpoint's own code
    tensor_parallel_size: int = 1
    max_model_len: int | None = None
    gpu_memory_utilization: float = 0.9
    base_url: str | None = None
    api_key_env: str | None = None
    concurrency: int = 8
    max_retries: int = 5
    request_timeout: float = 120.0
    retry_backoff: float = 1.0


def make_generator(name: str, model: str, options: GeneratorOptions) -> QueryGenerator:
    """The backend ``name`` serving ``model``."""
    if name == "transformers":
        from .hf_generate import TransformersGenerator

        return TransformersGenerator(model, options.device, options.dtype, options.trust_remote_code)
    if name == "vllm":
        from .vllm_engine import VllmGenerator

        return VllmGenerator(model, options.tensor_parallel_size, options.max_model_len, options.dtype,
                           options.gpu_memory_utilization, options.trust_remote_code)
    if name == "openai":
        from .openai_server import OpenAIGenerator

        if not options.base_url:
            raise InputError("the openai backend needs the server's URL: --base_url (--judge_base_url for the "
                             "filter's judge), e.g. http://localhost:8000/v1")
        return OpenAIGenerator(model, options.base_url, options.api_key_env, options.concurrency,
                             options.max_retries, options.request_timeout, options.retry_backoff)
    raise ValueError(f"unknown backend {name!r}; choose from {', '.join(GENERATORS)}")


__all__ = ["GENERATORS", "QueryGenerator", "GeneratorOptions", "Decoding", "Reply", "Request", "clip", "make_generator"]
