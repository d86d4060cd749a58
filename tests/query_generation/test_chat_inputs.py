"""Chat generation inputs (``ChatInputs``) on tiny checkpoints: a page image becomes the same image tokens and
tensors as in the family's retrieval inputs; a family without chat inputs is refused by name."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image
from transformers import AutoConfig, AutoTokenizer

from data_prep.errors import InputError
from query_generation.generators.chat_inputs import ChatInputs
from retriever.model.backbones import backbone_for_model_type
from retriever.model.saved import load_image_processor
from tests.helpers.tiny_models import GENERATIVE_PARAMS

MESSAGES = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:,"}},
                                         {"type": "text", "text": "Write one query."}]}]


def runs_of(ids: list[int], part: list[int]) -> int:
    """How many times ``part`` occurs in ``ids`` as a contiguous run."""
    return sum(ids[i:i + len(part)] == part for i in range(len(ids) - len(part) + 1))


@pytest.mark.parametrize("arch", GENERATIVE_PARAMS)
def test_chat_image_tokens_and_tensors_are_the_retrieval_ones(arch, tiny_model_dir):
    path = tiny_model_dir(arch)
    tokenizer, config = AutoTokenizer.from_pretrained(path), AutoConfig.from_pretrained(path)
    chat = ChatInputs(str(path), tokenizer, load_image_processor(path), config)
    retrieval = backbone_for_model_type(config.model_type)(tokenizer, load_image_processor(path), config)
    image = Image.new("RGB", (200, 300), (10, 200, 30))  # several tiles / patches where the family tiles
    generated, page = chat.example(MESSAGES, image), retrieval.page_example(image, "text")
    image_ids = retrieval.text_ids(retrieval.image_inputs(image)[0])
    assert runs_of(generated.input_ids, image_ids) == runs_of(page.input_ids, image_ids) == 1
    image_token = config.image_token_id
    assert generated.input_ids.count(image_token) == page.input_ids.count(image_token) > 1
    assert generated.tensors and all(torch.equal(t, page.tensors[k]) for k, t in generated.tensors.items())


def test_a_family_without_chat_inputs_is_refused_naming_the_supported_ones():
    with pytest.raises(InputError, match=r"^m: model_type 'minicpmv' has no input builder; supported: gemma3, "
                                         r"idefics3, internvl, minicpmv4_6, minicpmv4_7, paligemma, qwen2_5_vl, "
                                         r"qwen2_vl, qwen3_5, qwen3_vl "
                                         r"\(or serve it with --backend vllm/openai\)$"):
        ChatInputs("m", None, None, SimpleNamespace(model_type="minicpmv"))
