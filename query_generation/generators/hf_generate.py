"""transformers backend: ``AutoModelForImageTextToText.generate`` on batches, the checkpoint's own tokenizer,
image processor and chat template (see :mod:`.chat_inputs`). Runs anywhere torch runs, CPU included. Code shipped
with the checkpoint runs only with ``trust_remote_code`` (see :mod:`retriever.model.remote_code`)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

from retriever.model.dtype import dtype_name, torch_dtype
from retriever.model.remote_code import remote_code_refused
from retriever.model.saved import load_image_processor, resolve_checkpoint

from .base import REMOTE_CODE_FLAG, QueryGenerator, Decoding, Reply, Request
from .chat_inputs import ChatInputs


class TransformersGenerator(QueryGenerator):
    name = "transformers"

    def __init__(self, model: str, device: str | None = None, dtype: str = "auto",
                 trust_remote_code: bool = False) -> None:
        super().__init__(model)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        path = resolve_checkpoint(model)
        with remote_code_refused(model, REMOTE_CODE_FLAG):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
            config = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
            self.inputs = ChatInputs(model, tokenizer, load_image_processor(path, trust_remote_code), config)
            loaded = AutoModelForImageTextToText.from_pretrained(path, dtype=torch_dtype(dtype_name(dtype)),
                                                                 trust_remote_code=trust_remote_code)
        self.net = loaded.to(self.device).eval()
        self.inputs.bind(self.net)

    @torch.inference_mode()
    def generate(self, requests: Sequence[Request], decoding: Decoding) -> list[Reply]:
        """One batched ``generate``; sampling is seeded with the batch's first request seed."""
        batch = self.inputs.batch([self.inputs.example(r.messages, r.image) for r in requests])
        batch = {k: v.to(self.device) for k, v in batch.items()}
        if "pixel_values" in batch:
            batch["pixel_values"] = batch["pixel_values"].to(self.net.dtype)
        sample = decoding.temperature > 0
        torch.manual_seed(requests[0].seed)
        out = self.net.generate(**batch, max_new_tokens=decoding.max_new_tokens, do_sample=sample,
                                temperature=decoding.temperature if sample else None, top_p=None, top_k=None,
                                num_return_sequences=decoding.samples, pad_token_id=self.inputs.adapter.pad_id)
        texts = self.inputs.adapter.tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:],
                                                           skip_special_tokens=True)
        n = decoding.samples
        return [Reply(texts[i * n:(i + 1) * n]) for i in range(len(requests))]
