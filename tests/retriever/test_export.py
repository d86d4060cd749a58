"""python -m retriever.export: our retrievers as checkpoints the reference classes load with the same embeddings."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.helpers.cli import one_error_line
from tests.helpers.published_refs import (REFERENCES, build_reference, colpali_engine_available, lenient_processor_init,
                            load_reference, reference_embeddings, sample_images)
from retriever.export import PushError, main, push_to_hub
from retriever.model.saved import TRAINING_ARGS_FILE, load_encoder, save_encoder

QUERIES = ["hello world", "what was the revenue in 2023?"]
needs_engine = pytest.mark.skipif(not colpali_engine_available(), reason="colpali-engine is not installed")


def _assert_same(ours: list[torch.Tensor], theirs: list[torch.Tensor]) -> None:
    assert [t.shape for t in ours] == [t.shape for t in theirs]
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def _fine_tuned(published: Path, out: Path) -> Path:
    """Our own retriever directory of ``published`` with changed weights, as a run's final/ would be."""
    encoder = load_encoder(published, dtype="float32")
    with torch.no_grad():  # a change along the hidden dimension (a constant one would vanish in a LayerNorm)
        changed = encoder.head.projection if encoder.multi_vector else encoder.hf_model.get_input_embeddings()
        changed.weight.add_(0.05 * torch.linspace(-1, 1, changed.weight.shape[-1]))
        next(encoder.hf_model.parameters()).mul_(1.1)
    save_encoder(encoder, out)
    return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=needs_engine) if n.startswith("engine_") else n
                                  for n in REFERENCES])
def test_export_loads_in_reference_class(name, tiny_model_dir, tmp_path):
    from transformers import AutoConfig, AutoTokenizer

    from retriever.model.saved import load_image_processor

    tiny = tiny_model_dir(REFERENCES[name].arch)
    _, published_processor = build_reference(name, tiny, tmp_path / "published")
    ours = _fine_tuned(tmp_path / "published", tmp_path / "final")
    fmt = "colpali" if name.startswith("engine_") else "transformers"
    assert main(["--model", str(ours), "--format", fmt, "--out", str(tmp_path / "export")]) == 0
    exported = load_reference(name, tmp_path / "export")
    with lenient_processor_init():  # the reference processor on the export's own tokenizer / image processor files
        processor = REFERENCES[name].processor(load_image_processor(tmp_path / "export"),
                                               AutoTokenizer.from_pretrained(tmp_path / "export"),
                                               AutoConfig.from_pretrained(tiny))
    if not name.startswith("engine_"):  # what transformers' processor reads from the export lays pages out as ours
        prompts = json.loads((tmp_path / "export" / "processor_config.json").read_text())
        assert (prompts["query_prefix"], prompts["visual_prompt_prefix"]) == (processor.query_prefix,
                                                                             processor.visual_prompt_prefix)
    ref_q, ref_p = reference_embeddings(exported, processor, QUERIES, sample_images())
    encoder = load_encoder(ours, dtype="float32")
    _assert_same(list(encoder.encode_queries(QUERIES)), ref_q)
    _assert_same(list(encoder.encode_pages(sample_images())), ref_p)
    published_q, _ = reference_embeddings(load_reference(name, tmp_path / "published"), published_processor,
                                          QUERIES, [])
    assert (published_q[0] - ref_q[0]).abs().max() > 1e-3  # the export holds the fine-tuned weights
    from safetensors import safe_open
    with safe_open(str(tmp_path / "export" / "model.safetensors"), "pt") as f, \
            safe_open(str(tmp_path / "published" / "model.safetensors"), "pt") as g:
        assert set(f.keys()) == set(g.keys())  # the reference class's own layout, key for key


def test_dense_exports_as_dse(tiny_model_dir, tmp_path):
    dse = tmp_path / "dse"
    shutil.copytree(tiny_model_dir("qwen2_vl"), dse)
    (dse / "README.md").write_text("# DSE\nDocument Screenshot Embedding (Tevatron)\n")
    ours = tmp_path / "final"
    encoder = load_encoder(dse, dtype="float32")
    with torch.no_grad():
        next(encoder.hf_model.parameters()).mul_(1.1)
    save_encoder(encoder, ours)
    (ours / TRAINING_ARGS_FILE).write_text(json.dumps({"model_name_or_path": "MrLight/dse-qwen2-2b-mrl-v1",
                                                      "train_data": "pairs.jsonl", "learning_rate": 1e-5}))
    metrics = tmp_path / "metrics.json"
    metrics.write_text(json.dumps({"tasks": {"ToyRetrieval": {"main_score": 0.75, "ndcg_at_5": 0.75}},
                                   "average": {"main_score": 0.75, "ndcg_at_5": 0.75}}))
    assert main(["--model", str(ours), "--format", "transformers", "--out", str(tmp_path / "export"),
                 "--metrics", str(metrics)]) == 0
    exported = load_encoder(tmp_path / "export", dtype="float32")
    assert exported.config.input_format == "dse"  # recognised as DSE from the generated card
    images = sample_images()
    torch.testing.assert_close(exported.encode_queries(QUERIES), encoder.encode_queries(QUERIES), atol=1e-5, rtol=0)
    torch.testing.assert_close(exported.encode_pages(images), encoder.encode_pages(images), atol=1e-5, rtol=0)
    card = (tmp_path / "export" / "README.md").read_text()
    assert "base_model: MrLight/dse-qwen2-2b-mrl-v1" in card and '"train_data": "pairs.jsonl"' in card
    assert "| ToyRetrieval | 0.7500 |" in card and '"learning_rate": 1e-05' in card


def test_native_input_format_is_refused(tiny_model_dir, tmp_path, capsys):
    """A model fed our own prompt layout would give other embeddings in colpali-engine's processor."""
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl"), override={"head": "multi"}), tmp_path / "final")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "final"), "--format", "colpali", "--out", str(tmp_path / "export")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "input settings differ from colpali-engine ColQwen2's" in err
    assert "query_prefix='Query: ' (the format's: '')" in err and "input_format='native'" in err
    assert not (tmp_path / "export").exists()


class _UnreachableHub:
    """``huggingface_hub.HfApi`` whose upload fails, as without a network."""

    def create_repo(self, repo_id: str, exist_ok: bool = False) -> None:
        pass

    def upload_folder(self, repo_id: str, folder_path: str) -> None:
        raise ConnectionError("the hub cannot be reached")


def test_a_failed_push_is_one_error_line_and_the_folder_is_kept(tiny_model_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", _UnreachableHub)
    dse = tmp_path / "dse"
    shutil.copytree(tiny_model_dir("qwen2_vl"), dse)
    (dse / "README.md").write_text("# DSE\nDocument Screenshot Embedding (Tevatron)\n")
    out = tmp_path / "export"
    line = one_error_line(main, ["--model", dse, "--format", "transformers", "--out", out, "--dtype", "float32",
                                 "--push_to_hub", "someone/model"], capsys)
    assert line == (f"error: not pushed to someone/model (ConnectionError: the hub cannot be reached); the checkpoint "
                    f"is written in {out} only: upload it once the hub is reachable (huggingface-cli upload "
                    f"someone/model {out})")
    assert (out / "model.safetensors").exists() and (out / "README.md").exists()
    with pytest.raises(PushError, match="not pushed to someone/model"):
        push_to_hub(out, "someone/model")


def test_the_model_card_states_how_multi_vector_scores_were_scaled() -> None:
    from retriever.model_card import _training

    state = {"training_mode": "full"}
    lines = lambda **args: "\n".join(_training(state, {"temperature": 0.02, **args}))  # noqa: E731
    assert "- loss: InfoNCE, temperature 0.02\n" in lines(head="dense", maxsim_normalization="query_length")
    assert "MaxSim scores divided by the query's token count" in lines(head="multi",
                                                                     maxsim_normalization="query_length")
    assert "raw MaxSim sums (--maxsim_normalization none)" in lines(head="multi", maxsim_normalization="none")
    assert "raw MaxSim sums (trained before the query-length normalisation existed)" in lines(head="multi")


def test_a_format_without_a_class_for_the_backbone_is_one_error_line(tiny_model_dir, tmp_path, capsys) -> None:
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl")), tmp_path / "final")
    line = one_error_line(main, ["--model", tmp_path / "final", "--format", "colpali", "--out", tmp_path / "x"],
                          capsys)
    assert line == ("error: --format colpali: no dense colpali-engine format for backbone 'qwen2_vl' (exportable "
                    "backbones: gemma3, modernvbert, qwen3_5, qwen3_vl)")


@needs_engine
def test_index_settings_and_a_compression_table_travel_in_the_card(tiny_model_dir, tmp_path, capsys) -> None:
    """The index flags of a multi-vector export go to index_settings.json and the card, with the table of an
    eval.retrieval --compare compression.json; on a dense model they are one error line."""
    build_reference("engine_colqwen2", tiny_model_dir("qwen2_vl"), tmp_path / "published")
    save_encoder(load_encoder(tmp_path / "published"), tmp_path / "final")
    record = {"name": "pool 3", "bytes_ratio": 0.32, "scanned_ratio": 0.32, "ndcg_at_10": 0.8, "ndcg_at_10_kept": 0.99,
              "top10_overlap": 0.98}
    (tmp_path / "cmp").mkdir()
    (tmp_path / "cmp" / "compression.json").write_text(json.dumps([record]))
    assert main(["--model", str(tmp_path / "final"), "--format", "colpali", "--out", str(tmp_path / "export"),
                 "--pool_factor", "3", "--candidates", "binary", "--rerank_depth", "200",
                 "--compression", str(tmp_path / "cmp" / "compression.json")]) == 0
    settings = json.loads((tmp_path / "export" / "index_settings.json").read_text())
    assert settings["pool_factor"] == 3 and settings["candidates"] == "binary" and settings["rerank_depth"] == 200
    card = (tmp_path / "export" / "README.md").read_text()
    assert "## Index" in card and "`--pool_factor 3 --quantize none --candidates binary --rerank_depth 200`" in card
    assert "| pool 3 | 0.320 | 0.320 | 0.8000 | 0.990 | 0.980 |" in card
    dense = tmp_path / "dense"
    save_encoder(load_encoder(tiny_model_dir("qwen2_vl")), dense)
    line = one_error_line(main, ["--model", str(dense), "--format", "transformers", "--out", str(tmp_path / "d"),
                                 "--quantize", "int8"], capsys)
    assert line.startswith(f"error: --quantize: {dense} is a dense model")
