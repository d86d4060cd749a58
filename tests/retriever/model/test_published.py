"""Published checkpoints (colpali-engine, transformers Col*ForRetrieval, DSE) give the reference forward's embeddings.

Each reference checkpoint is written by the reference class itself (random weights on the tiny backbones); the
reference embeddings come from that class's forward on its own processor's inputs, one input at a time (the
reference models' positions or attention change with padding; ours do not, see docs/MODELS.md).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from tests.helpers.published_refs import (REFERENCES, build_reference, colpali_engine_available,
                                          lenient_processor_init, load_reference, reference_embeddings, sample_images,
                                          write_adapter)
from data_prep.errors import InputError
from retriever.export import main as export_main
from retriever.merge import main as merge_main
from retriever.model.saved import load_encoder
from retriever.scoring import maxsim_lists

QUERIES = ["hello world", "what was the revenue in 2023?"]
ENGINE = [name for name in REFERENCES if name.startswith("engine_")]
needs_engine = pytest.mark.skipif(not colpali_engine_available(), reason="colpali-engine is not installed")


def _assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _check_equivalence(encoder, model, processor) -> None:
    images = sample_images()
    ref_q, ref_p = reference_embeddings(model, processor, QUERIES, images)
    our_q, our_p = encoder.encode_queries(QUERIES), encoder.encode_pages(images)
    _assert_same(list(our_q), ref_q)
    _assert_same(list(our_p), ref_p)
    if not encoder.multi_vector:  # cosine scores of unit vectors
        torch.testing.assert_close(our_q @ our_p.T, torch.stack(ref_q) @ torch.stack(ref_p).T, atol=1e-5, rtol=0)
        return
    ref_scores = torch.stack([torch.stack([(q @ p.T).max(-1).values.sum() for p in ref_p]) for q in ref_q])
    torch.testing.assert_close(maxsim_lists(our_q, our_p), ref_scores, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_engine) if n in ENGINE else n for n in REFERENCES])
def test_published_checkpoint_matches_reference(name, tiny_model_dir, tmp_path):
    model, processor = build_reference(name, tiny_model_dir(REFERENCES[name].arch), tmp_path / name)
    encoder = load_encoder(tmp_path / name, dtype="float32")
    assert encoder.multi_vector != REFERENCES[name].dense and encoder.config.input_format != "native"
    _check_equivalence(encoder, model, processor)


@needs_engine
@pytest.mark.parametrize("name", ["engine_colqwen2", "engine_colpali"])
def test_peft_adapter_repo_matches_reference(name, tiny_model_dir, tmp_path):
    """An adapter repo (LoRA on the LM and the projection, as colqwen2-v1.0) naming its base by path."""
    base = tmp_path / "base"
    model, processor = build_reference(name, tiny_model_dir(REFERENCES[name].arch), base)
    peft_model = write_adapter(model, base, tmp_path / "adapter",
                               r"(.*(language_model).*(q_proj|v_proj|down_proj)$|.*custom_text_proj$)")
    encoder = load_encoder(tmp_path / "adapter", dtype="float32")
    _check_equivalence(encoder, peft_model, processor)


def test_lora_training_on_a_published_adapter_then_merge_and_export(tiny_model_dir, tmp_path):
    """python -m retriever.train (GradCache, LoRA) starts from a published adapter repo; the run reloads on it,
    retriever.merge folds it into a full checkpoint with the same embeddings, and retriever.export with its default
    flags writes the run back as a ColQwen2ForRetrieval that transformers' class and processor load with the run's
    embeddings; a published checkpoint itself exports with the default flags too."""
    base, adapter, run = tmp_path / "base", tmp_path / "adapter", tmp_path / "run"
    model, _ = build_reference("tf_colqwen2", tiny_model_dir("qwen2_vl"), base)
    write_adapter(model, base, adapter, r"(.*language_model.*(q_proj|v_proj)$|.*embedding_proj_layer$)")
    data = _pairs(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "retriever.train", "--model_name_or_path", str(adapter), "--output_dir", str(run),
         "--train_data", str(data / "pairs.jsonl"), "--image_root", str(data), "--per_device_train_batch_size", "4",
         "--num_negatives", "1", "--gc_chunk_size", "3", "--training_mode", "lora", "--learning_rate", "1e-2",
         "--max_steps", "2", "--seed", "3", "--dataloader_num_workers", "0", "--report_to", "none",
         "--disable_tqdm"], env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    published = load_encoder(adapter, dtype="float32")
    trained = load_encoder(run / "final", dtype="float32")
    assert trained.config.input_format == "transformers" and trained.config.query_prefix == "Query: "
    assert trained.is_peft is False  # loaded for inference: the run's own LoRA merged on the published weights
    before, after = published.encode_queries(QUERIES), trained.encode_queries(QUERIES)
    assert all((a - b).abs().max() > 1e-4 for a, b in zip(before, after)), "training changed nothing"
    merge_main(["--model", str(run / "final"), "--out", str(tmp_path / "merged"), "--dtype", "float32"])
    merged = load_encoder(tmp_path / "merged", dtype="float32")
    _assert_same(merged.encode_queries(QUERIES), after)
    _assert_same(merged.encode_pages(sample_images()), trained.encode_pages(sample_images()))
    for source, out in ((run / "final", tmp_path / "export"), (base, tmp_path / "export_base")):
        assert export_main(["--model", str(source), "--format", "transformers", "--out", str(out)]) == 0
    exported, processor = load_reference("tf_colqwen2", tmp_path / "export"), _reference_processor(tmp_path / "export")
    _check_equivalence(trained, exported, processor)


def _reference_processor(directory):
    """transformers' ColQwen2Processor on a directory's tokenizer and image processor (no video processor here)."""
    from transformers import AutoConfig, AutoTokenizer

    from retriever.model.saved import load_image_processor

    with lenient_processor_init():
        return REFERENCES["tf_colqwen2"].processor(load_image_processor(directory),
                                                   AutoTokenizer.from_pretrained(directory),
                                                   AutoConfig.from_pretrained(directory))


def _pairs(root):
    """Eight small pages and query pairs with one hard negative each."""
    root.mkdir()
    for i, image in enumerate(sample_images(3, seed=i)[0] for i in range(8)):
        image.save(root / f"page{i}.png")
    lines = [json.dumps({"query": f"what is on page {i}?", "pos": [f"page{i}.png"], "neg": [f"page{(i + 1) % 8}.png"]})
             for i in range(8)]
    (root / "pairs.jsonl").write_text("\n".join(lines) + "\n")
    return root


def test_dse_checkpoint_matches_model_card(tiny_model_dir, tmp_path):
    """DSE: last-token pooled, normalised; the model card's prompts (system turn, blank image in queries)."""
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    from retriever.model.saved import load_image_processor

    src = tiny_model_dir("qwen2_vl")
    dse = tmp_path / "dse"
    shutil.copytree(src, dse)
    (dse / "README.md").write_text("# DSE\nDocument Screenshot Embedding (Tevatron)\n")
    encoder = load_encoder(dse, dtype="float32")
    assert encoder.config.head == "dense" and encoder.config.input_format == "dse"
    model = AutoModelForImageTextToText.from_pretrained(dse, dtype=torch.float32).eval()
    tokenizer, image_processor = AutoTokenizer.from_pretrained(dse), load_image_processor(dse)
    turn = ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
            "<|vision_start|><|image_pad|><|vision_end|>{}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>")

    def card_embedding(text, image):
        pixels = image_processor(images=[image], return_tensors="pt")
        n_tokens = int(pixels["image_grid_thw"].prod()) // image_processor.merge_size ** 2
        ids = tokenizer(turn.format(text).replace("<|image_pad|>", "<|image_pad|>" * n_tokens),
                        return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids), mm_token_type_ids=(
                ids == model.config.image_token_id).int(), output_hidden_states=True, **pixels).hidden_states[-1]
        return torch.nn.functional.normalize(hidden[0, -1], dim=-1)

    from PIL import Image
    blank = Image.new("RGB", (28, 28))
    images = sample_images()
    expected_q = torch.stack([card_embedding(f"Query: {q}", blank) for q in QUERIES])
    expected_p = torch.stack([card_embedding("What is shown in this image?", im) for im in images])
    torch.testing.assert_close(encoder.encode_queries(QUERIES), expected_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(encoder.encode_pages(images), expected_p, atol=1e-5, rtol=0)


def test_unknown_retrieval_architecture_lists_formats(tiny_model_dir, tmp_path):
    ckpt = tmp_path / "colsmol"
    shutil.copytree(tiny_model_dir("qwen2_vl"), ckpt)
    config = json.loads((ckpt / "config.json").read_text())
    (ckpt / "config.json").write_text(json.dumps({**config, "architectures": ["ColSmolVLM2"]}))
    with pytest.raises(ValueError, match="'ColSmolVLM2' is not a supported.*colpali-engine ColQwen2.*ColQwen3.*DSE"):
        load_encoder(ckpt)


def test_adapter_with_missing_base_names_it(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": "vidore/colqwen2-base-not-here", "peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    with pytest.raises(FileNotFoundError, match="vidore/colqwen2-base-not-here"):
        load_encoder(adapter)


def test_head_size_disagreeing_with_config_is_an_error(tiny_model_dir, tmp_path):
    build_reference("tf_colqwen2", tiny_model_dir("qwen2_vl"), tmp_path / "hf")
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    (tmp_path / "hf" / "config.json").write_text(json.dumps({**config, "embedding_dim": 64}))
    with pytest.raises(ValueError, match=r"embedding_proj_layer\.weight has 128 outputs, but config.json "
                                         r"embedding_dim says 64"):
        load_encoder(tmp_path / "hf")


def test_a_hub_processor_config_keeps_the_page_turn_around_the_prompt(tiny_model_dir, tmp_path):
    """transformers' ColQwen2 processor keeps the whole page turn in ``visual_prompt_prefix`` (as the -hf repos'
    processor_config.json do): the page prompt is read out of it, so the pages equal the reference's, and a value
    in another layout is one error line instead of a silently different prompt."""
    model, processor = build_reference("tf_colqwen2", tiny_model_dir("qwen2_vl"), tmp_path / "hf")
    config = {"processor_class": "ColQwen2Processor", "query_prefix": "Query: ",
              "visual_prompt_prefix": processor.visual_prompt_prefix}
    (tmp_path / "hf" / "processor_config.json").write_text(json.dumps(config))
    encoder = load_encoder(tmp_path / "hf", dtype="float32")
    assert encoder.config.page_prompt == "Describe the image."
    _check_equivalence(encoder, model, processor)
    config["visual_prompt_prefix"] = "<image>Describe the image."
    (tmp_path / "hf" / "processor_config.json").write_text(json.dumps(config))
    with pytest.raises(InputError, match="visual_prompt_prefix '<image>Describe the image.' is not laid out as "
                                         "ColQwen2ForRetrieval's processor lays out pages"):
        load_encoder(tmp_path / "hf", dtype="float32")
