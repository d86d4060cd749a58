"""The README.md model card of an exported checkpoint (:mod:`retriever.export`).

It states the base model and how the model was trained, from what the run saved next to its weights
(``retriever_config.json``: encoder settings, training mode, LoRA; ``training_args.json``: the training flags,
written by ``retriever.train`` into ``final/``), the metrics of an ``eval.retrieval`` metrics.json when given, the
recommended index settings (and an ``eval.retrieval --compare`` table) of a multi-vector model when given, and a
usage snippet for the library whose classes load the export. What the run did not record is said to be unknown.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from data_prep.errors import InputError
from eval.report import markdown_table
from retriever.index import IndexSettings
from retriever.model.encoder import EncoderConfig
from retriever.model.published import PublishedFormat
from retriever.model.saved import TRAINING_ARGS_FILE

__all__ = ["index_section", "model_card", "read_metrics"]

DATA_FLAGS = ("train_data", "image_root", "page_store", "eval_data")
PROCESSORS = {"ColQwen2": "ColQwen2Processor", "ColQwen2_5": "ColQwen2_5_Processor", "ColQwen3": "ColQwen3Processor",
              "BiQwen3": "BiQwen3Processor", "ColQwen3_5": "ColQwen3_5Processor", "BiQwen3_5": "BiQwen3_5Processor",
              "ColGemma3": "ColGemmaProcessor3", "BiGemma3": "BiGemmaProcessor3", "ColPali": "ColPaliProcessor",
              "ColIdefics3": "ColIdefics3Processor",
              "ColQwen2ForRetrieval": "ColQwen2Processor", "ColPaliForRetrieval": "ColPaliProcessor",
              "ColModernVBertForRetrieval": "ColModernVBertProcessor", "ColModernVBert": "ColModernVBertProcessor",
              "BiModernVBert": "BiModernVBertProcessor"}


def read_metrics(path: Path) -> str:
    """The markdown table of an ``eval.retrieval`` metrics.json (the run's, or one task's)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(f"--metrics {path}: cannot read it as JSON ({err}); pass the metrics.json that "
                         "python -m eval.retrieval wrote") from err
    if "tasks" in data and "average" in data:
        return markdown_table({**data["tasks"], "average": data["average"]})
    if "aggregate" in data:
        return markdown_table({path.parent.name: data["aggregate"]})
    raise InputError(f"--metrics {path}: neither an eval.retrieval metrics.json ('tasks' and 'average') nor a "
                     "task's ('aggregate')")


def _usage(fmt: PublishedFormat, repo: str) -> str:
    architecture = fmt.architectures[0]
    if fmt.library == "Tevatron":
        return (f'```python\nfrom retriever.model.saved import load_encoder\n\nencoder = load_encoder("{repo}")\n'
                'pages = encoder.encode_pages(images)        # [N, D], unit norm\n'
                'queries = encoder.encode_queries(["..."])   # "Query: " and a blank image, as DSE\n'
                'scores = queries @ pages.T\n```\n')
    engine = fmt.library == "colpali-engine"
    module, out = ("colpali_engine.models", "") if engine else ("transformers", ".embeddings")
    score = "score" if fmt.head_key is None else "score_multi_vector" if engine else "score_retrieval"
    processor = PROCESSORS[architecture]
    return (f"```python\nfrom {module} import {architecture}, {processor}\n\n"
            f'model = {architecture}.from_pretrained("{repo}").eval()\n'
            f'processor = {processor}.from_pretrained("{repo}")\n'
            f'queries = model(**processor.process_queries(["..."])){out}\n'
            f"pages = model(**processor.process_images(images)){out}\n"
            f"scores = processor.{score}(queries, pages)  # {'cosine' if fmt.head_key is None else 'MaxSim'}\n```\n")


def _training(state: Mapping[str, Any] | None, args: Mapping[str, Any] | None) -> list[str]:
    lines = ["## Training", ""]
    if state is None:
        lines.append("Not trained by vlmret (no retriever_config.json): the weights are the loaded checkpoint's.")
        return lines
    lines.append(f"- training mode: {state.get('training_mode', 'full')}"
                 + (f", LoRA {json.dumps(state['lora'], sort_keys=True)}" if state.get("lora") else "")
                 + (", vision tower frozen" if state.get("freeze_vision") else ""))
    if args is None:
        lines.append(f"- training data and flags: unknown (the run did not save {TRAINING_ARGS_FILE})")
        return lines
    data = {k: args[k] for k in DATA_FLAGS if args.get(k)}
    lines.append(f"- training data: {json.dumps(data) if data else 'not recorded'}")
    lines.append(_loss_line(args))
    flags = {k: v for k, v in args.items() if k not in DATA_FLAGS and v not in (None, False, "", [])}
    lines += ["- flags:", "", "```json", json.dumps(flags, indent=2, sort_keys=True, default=str), "```"]
    return lines


def _loss_line(args: Mapping[str, Any]) -> str:
    """The loss in words: temperature and, for the multi-vector head, how MaxSim scores were scaled."""
    temperature = "learnable" if args.get("learnable_temperature") else args.get("temperature", "unknown")
    line = f"- loss: InfoNCE, temperature {temperature}"
    if args.get("head") != "multi":
        return line
    normalization = args.get("maxsim_normalization")
    if normalization == "query_length":
        return line + "; MaxSim scores divided by the query's token count (colpali-engine's ColbertLoss)"
    return line + "; raw MaxSim sums (" + ("--maxsim_normalization none)" if normalization else
                                          "trained before the query-length normalisation existed)")


def index_section(settings: IndexSettings, compression: Path | None) -> str:
    """The card's index section: the recommended index flags, and the table of an ``eval.retrieval --compare``
    compression.json when given."""
    flags = {"--pool_factor": settings.pool_factor, "--quantize": settings.quantize,
             "--candidates": settings.candidates, "--rerank_depth": settings.rerank_depth}
    lines = [f"Recommended index settings ({settings.describe()}), the flags of `eval.retrieval`, `retriever.mine` and "
             "`eval.encode`: `" + " ".join(f"{k} {v}" for k, v in flags.items()) +
             ("" if settings.pool_renormalize else " --no-pool_renormalize") + "` (`index_settings.json`)."]
    if compression is not None:
        try:
            records = json.loads(compression.read_text(encoding="utf-8"))
            rows = [f"| {r['name']} | {r['bytes_ratio']:.3f} | {r['scanned_ratio']:.3f} | {r['ndcg_at_10']:.4f} | "
                    f"{r['ndcg_at_10_kept']:.3f} | {r['top10_overlap']:.3f} |" for r in records]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise InputError(f"--compression {compression}: not an eval.retrieval --compare compression.json "
                             f"({err})") from err
        lines += ["", f"Measured with `eval.retrieval --compare` ({compression.parent.name}; bytes and scanned bytes "
                  "relative to exact MaxSim):", "",
                  "| configuration | bytes | scanned | nDCG@10 | nDCG@10 kept | top-10 overlap |", "|---" * 6 + "|",
                  *rows]
    return "\n".join(lines)


def model_card(fmt: PublishedFormat, config: EncoderConfig, source: Path, repo: str,
               state: Mapping[str, Any] | None, args: Mapping[str, Any] | None, metrics: str | None,
               index: str | None = None) -> str:
    """README.md of an export in ``fmt`` of the retriever at ``source``."""
    base = (args or {}).get("model_name_or_path") or "unknown (not recorded by the run)"
    front = ["---", f"base_model: {base}" if args and args.get("model_name_or_path") else "", "library_name: "
             + ("colpali-engine" if fmt.library == "colpali-engine" else "transformers"),
             "pipeline_tag: visual-document-retrieval", "tags: [vlmret, " + fmt.name.split(" ")[0] + "]", "---"]
    head = "dense" if fmt.head_key is None else "multi-vector"
    kind = "a DSE-style dense retriever (Document Screenshot Embedding, Tevatron's Qwen2-VL format)" \
        if fmt.library == "Tevatron" else f"a {head} retriever in {fmt.library}'s {fmt.architectures[0]} format"
    lines = [line for line in front if line] + [
        "", f"# {repo}", "", f"Exported by vlmret (`python -m retriever.export`) from `{source}`: {kind}.", "",
        f"- base model: {base}", f"- backbone: {config.backbone}",
        f"- encoder settings: `{json.dumps(asdict(config), sort_keys=True)}`", "", *_training(state, args), "",
        "## Metrics", "", metrics or "No metrics were given (`--metrics`).", "",
        *(["## Index", "", index, ""] if index else []), "## Usage", "", _usage(fmt, repo)]
    return "\n".join(lines)
