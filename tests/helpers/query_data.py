"""Helpers of the query-generation tests: small page stores, and a tiny checkpoint taught to answer in JSON.

A random-weight model writes noise, which exercises only the failure path. ``teach_json_answer`` overfits a tiny
checkpoint (a few seconds on CPU) to answer any page with a fixed queries JSON, so the success path (decode,
parse, records) runs end to end through the real transformers backend.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import torch
from PIL import Image, ImageDraw

from data_prep.store import PageStoreWriter

ANSWER = {"queries": [{"query": "solar power Spain", "kind": "topical"}]}
SHORT_PROMPT = "{image}\nWrite {num_queries} queries as JSON.\n"


def page_png(seed: int, size: tuple[int, int] = (80, 112)) -> bytes:
    """A small synthetic page: a few grey bars whose layout depends on ``seed``."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for row in range(4):
        width = 20 + (seed * 13 + row * 7) % 50
        draw.rectangle([6, 10 + row * 22, 6 + width, 18 + row * 22], fill=(40 * row, 90, 200 - 30 * row))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def make_store(path: Path, page_ids: list[str], broken: tuple[str, ...] = ()) -> Path:
    """A page store holding ``page_ids`` (PNG pages); ids in ``broken`` hold bytes that are no image."""
    with PageStoreWriter(path) as writer:
        for i, page_id in enumerate(page_ids):
            writer.add(page_id, b"not an image" if page_id in broken else page_png(i))
    return path


def write_pages_jsonl(path: Path, page_ids: list[str]) -> Path:
    lines = [{"id": pid, "doc_id": pid.rsplit("/", 1)[0], "page": int(pid.rsplit("/", 1)[1]), "source": "x.pdf"}
             for pid in page_ids]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def teach_json_answer(model_dir: Path, out: Path, prompt_messages: list[dict], steps: int = 80) -> Path:
    """Copy of ``model_dir`` fine-tuned to answer ``prompt_messages`` (any page) with :data:`ANSWER`."""
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    from query_generation.generators.chat_inputs import ChatInputs
    from retriever.model.saved import load_image_processor

    shutil.copytree(model_dir, out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    inputs = ChatInputs(str(out), tokenizer, load_image_processor(out), AutoConfig.from_pretrained(out))
    model = AutoModelForImageTextToText.from_pretrained(out)
    inputs.bind(model)
    target = tokenizer(json.dumps(ANSWER), add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    examples = []
    for seed in range(3):
        example = inputs.example(prompt_messages, Image.open(io.BytesIO(page_png(seed))).convert("RGB"))
        examples.append(type(example)(example.input_ids + target, example.tensors))
    batch = inputs.batch(examples)
    labels = batch["input_ids"].clone()
    labels[:, : labels.shape[1] - len(target)] = -100
    torch.manual_seed(0)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(steps):
        loss = model(**batch, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(out)
    return out
