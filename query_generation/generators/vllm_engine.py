"""vLLM backend: the offline engine (``vllm.LLM``) on one GPU, or ``--tensor_parallel_size`` GPUs.

Written against vLLM's documented offline API: ``LLM(model, tensor_parallel_size, max_model_len,
limit_mm_per_prompt={"image": 1}, ...)``, ``LLM.chat(conversations, sampling_params=[...])`` with images as
``image_url`` parts (data URLs), ``SamplingParams(n, temperature, seed, max_tokens)`` with one seed per page, and
JSON-schema structured output through ``StructuredOutputsParams`` (vLLM >= 0.10) or ``GuidedDecodingParams``
(older releases) when the installed vLLM has either; ``trust_remote_code`` is always passed (``False`` unless
asked for). Data parallelism is one engine per GPU over page shards
(``--num_shards`` / ``--shard_index``; ``shell/render_and_generate.sh`` launches them). vLLM cannot run on the
development machines, so this module is tested against a fake ``vllm`` package that checks every call.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from data_prep.errors import InputError
from retriever.model.remote_code import remote_code_refused

from .base import REMOTE_CODE_FLAG, QueryGenerator, Decoding, Reply, Request


def structured_output_kwargs(json_schema: dict[str, Any] | None) -> dict[str, Any]:
    """``SamplingParams`` keyword for JSON-schema output with the installed vLLM, or ``{}``."""
    if json_schema is None:
        return {}
    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=json_schema)}
    except ImportError:
        pass
    try:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=json_schema)}
    except ImportError:
        return {}


class VllmGenerator(QueryGenerator):
    name = "vllm"

    def __init__(self, model: str, tensor_parallel_size: int = 1, max_model_len: int | None = None,
                 dtype: str = "auto", gpu_memory_utilization: float = 0.9, trust_remote_code: bool = False) -> None:
        super().__init__(model)
        try:
            from vllm import LLM
        except ImportError as err:
            raise InputError(f"the vllm backend needs the vllm package, which cannot be imported ({err}); install "
                             "it (pip install vllm) or choose the transformers or openai backend") from err

        kwargs: dict[str, Any] = {"model": model, "tensor_parallel_size": tensor_parallel_size,
                                  "limit_mm_per_prompt": {"image": 1},
                                  "dtype": dtype,
                                  "gpu_memory_utilization": gpu_memory_utilization,
                                  "trust_remote_code": trust_remote_code}
        if max_model_len:
            kwargs["max_model_len"] = max_model_len
        with remote_code_refused(model, REMOTE_CODE_FLAG):
            self.llm = LLM(**kwargs)

    def sampling_params(self, decoding: Decoding, seed: int) -> Any:
        from vllm import SamplingParams

        return SamplingParams(n=decoding.samples, temperature=decoding.temperature, seed=seed,
                              max_tokens=decoding.max_new_tokens, **structured_output_kwargs(decoding.json_schema))

    def generate(self, requests: Sequence[Request], decoding: Decoding) -> list[Reply]:
        """All requests in one ``LLM.chat`` call (vLLM schedules them itself)."""
        params = [self.sampling_params(decoding, r.seed) for r in requests]
        outputs = self.llm.chat([r.messages for r in requests], sampling_params=params, use_tqdm=False)
        return [Reply([completion.text for completion in output.outputs]) for output in outputs]
