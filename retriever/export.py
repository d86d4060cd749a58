"""CLI: a retriever as a checkpoint that another library's own classes load, with the same embeddings.

``python -m retriever.export --model DIR --format {colpali,transformers} --out DIR2 [--metrics metrics.json]
[--push_to_hub REPO]``

* multi-vector models: ``--format colpali`` writes colpali-engine's ``ColQwen2`` / ``ColQwen2_5`` /
  ``ColQwen3`` / ``ColQwen3_5`` / ``ColGemma3`` / ``ColPali`` / ``ColIdefics3`` checkpoint (Qwen2-VL, Qwen2.5-VL,
  Qwen3-VL, Qwen3.5, Gemma3, PaliGemma, Idefics3 backbones); ``--format transformers``
  writes transformers' ``ColQwen2ForRetrieval`` / ``ColPaliForRetrieval`` (Qwen2-VL, PaliGemma);
* dense models: ``--format transformers`` writes a DSE-style checkpoint (Qwen2-VL, last-token pooling,
  normalised), a plain ``Qwen2VLForConditionalGeneration`` whose model card names DSE; ``--format colpali``
  writes colpali-engine's ``BiQwen3`` / ``BiQwen3_5`` / ``BiGemma3`` (Qwen3-VL, Qwen3.5, Gemma3; last-token
  pooling, normalised, no projection) or ``BiModernVBert`` (mean pooling).

Weight names go through :mod:`retriever.model.published`'s key mapping in reverse (the table loading reads); the
weights are written with safetensors only. The other library formats queries and pages with its own processor,
so the model's input settings (query prefix, augmentation tokens, page prompt, padding side, prompt layout,
projection size) must be the ones the format implies, which is the case for a model loaded from, or trained
on, that format; otherwise the export is refused with the differing settings (its embeddings would differ).
A README.md model card is generated (:mod:`retriever.model_card`). ``--push_to_hub`` uploads the folder with
``huggingface_hub``; a push that fails (no reachable hub, no permission) is one error line and exit status 2, the
folder being written. An ``--out`` that is, lies in or contains the model (or a LoRA model's base) is refused first.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from data_prep.errors import InputError, MissingInputError, UserError, cli
from data_prep.outputs import check_outputs, write_text_atomic
from retriever.model.dtype import add_dtype_argument
from retriever.model.encoder import EncoderConfig, RetrieverEncoder
from retriever.model.published import FORMATS, PublishedFormat, published_key, visual_prompt_prefix
from retriever.model.saved import CONFIG_FILE, TRAINING_ARGS_FILE, checkpoint_inputs, load_encoder, resolve_checkpoint
from retriever.index import add_index_arguments, check_index_settings, index_settings
from retriever.model_card import index_section, model_card, read_metrics

__all__ = ["PushError", "export", "main", "target_format"]

LIBRARIES = {"colpali": ("colpali-engine",), "transformers": ("transformers", "Tevatron")}


class PushError(UserError):
    """``--push_to_hub`` did not upload the checkpoint (it is written locally)."""


def target_format(config: EncoderConfig, choice: str) -> PublishedFormat:
    """The published format ``--format choice`` means for a model with ``config``: for a dense model, a DSE-style
    checkpoint (``transformers``) or a colpali-engine ``Bi*`` one (``colpali``)."""
    libraries = LIBRARIES[choice]
    dense = config.head == "dense"
    kind = [f for f in FORMATS if (f.head_key is None) == dense and f.library in libraries]
    candidates = [f for f in kind if f.backbone == config.backbone]
    if not candidates:
        have = sorted({f.backbone for f in kind})
        raise InputError(f"--format {choice}: no {config.head} {' / '.join(libraries)} format for backbone "
                         f"{config.backbone!r} (exportable backbones: {', '.join(have) or 'none'})")
    return candidates[0]


def check_inputs(config: EncoderConfig, fmt: PublishedFormat) -> None:
    """Refuse a model whose input settings differ from those ``fmt``'s own processor applies."""
    free = {"matryoshka_dims": config.matryoshka_dims}
    if fmt.head_key is None:
        free["multi_dim"] = config.multi_dim  # unused by a dense head
    if fmt.nested_config:  # transformers: size and prompts are config / processor_config.json fields
        free.update(multi_dim=config.multi_dim, query_prefix=config.query_prefix,
                    page_prompt=config.page_prompt or fmt.settings["page_prompt"])
    expected = EncoderConfig.from_dict({"backbone": fmt.backbone, **fmt.settings, **free})
    diffs = [f"{f.name}={getattr(config, f.name)!r} (the format's: {getattr(expected, f.name)!r})"
             for f in dataclasses.fields(EncoderConfig) if getattr(config, f.name) != getattr(expected, f.name)]
    if diffs:
        raise InputError(f"the model's input settings differ from {fmt.library} {fmt.name}'s, so its own classes "
                         f"would give other embeddings: {'; '.join(diffs)}. Export a model loaded from or trained "
                         "on that format (or with these settings)")


def _weights(encoder: RetrieverEncoder, fmt: PublishedFormat) -> dict[str, torch.Tensor]:
    """The body (no LM head: retrieval classes have none) and the projection (multi-vector formats), named as
    ``fmt`` stores them."""
    state = {published_key(k, fmt.renames): v for k, v in encoder.hf_model.state_dict().items()
             if not k.startswith("lm_head.")}
    if fmt.head_key is not None:
        state.update({published_key(f"{fmt.head_key}.{k.removeprefix('projection.')}", fmt.renames): v
                      for k, v in encoder.head.state_dict().items()})
    return {k: v.detach().contiguous() for k, v in state.items()}


def _write_config(encoder: RetrieverEncoder, fmt: PublishedFormat, out: Path) -> None:
    """config.json: the backbone's with the format's class (colpali-engine), or the Col*Config (transformers)."""
    if fmt.nested_config:
        import transformers

        config_cls = getattr(transformers, fmt.architectures[0].replace("ForRetrieval", "Config"))
        config = config_cls(vlm_config=encoder.hf_model.config, embedding_dim=encoder.config.multi_dim)
    else:
        config = copy.deepcopy(encoder.hf_model.config)
    config.architectures = [fmt.architectures[0]]
    config.save_pretrained(out)


def _write_processor(encoder: RetrieverEncoder, fmt: PublishedFormat, out: Path) -> None:
    encoder.backbone.tokenizer.save_pretrained(out)
    encoder.backbone.image_processor.save_pretrained(out)
    if fmt.nested_config:
        page_prompt = encoder.config.page_prompt or fmt.settings["page_prompt"]
        prompts = {"query_prefix": encoder.config.query_prefix,
                   "visual_prompt_prefix": visual_prompt_prefix(fmt, page_prompt)}
        processor = {"processor_class": fmt.architectures[0].replace("ForRetrieval", "Processor"),
                     **{k: v for k, v in prompts.items() if v is not None}}
        write_text_atomic(out / "processor_config.json", json.dumps(processor, indent=2) + "\n")


def export(encoder: RetrieverEncoder, fmt: PublishedFormat, out: Path) -> None:
    """Write ``encoder`` to ``out`` in ``fmt`` (weights, config, tokenizer and image processor; no card)."""
    check_inputs(encoder.config, fmt)
    out.mkdir(parents=True, exist_ok=True)
    if fmt.library == "Tevatron":  # DSE: the backbone's own *ForConditionalGeneration checkpoint
        encoder.hf_model.save_pretrained(out, safe_serialization=True)
    else:
        save_file(_weights(encoder, fmt), str(out / "model.safetensors"), metadata={"format": "pt"})
        _write_config(encoder, fmt, out)
    _write_processor(encoder, fmt, out)


def push_to_hub(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the model repository ``repo``; the line to print. A failed upload raises
    :class:`PushError`."""
    from huggingface_hub import HfApi

    try:
        api = HfApi()
        api.create_repo(repo, exist_ok=True)
        api.upload_folder(repo_id=repo, folder_path=str(folder))
    except Exception as err:  # offline, unreachable, unauthorised: all mean "the folder was not uploaded"
        first_line = str(err).splitlines()[0] if str(err) else ""
        raise PushError(f"not pushed to {repo} ({type(err).__name__}: {first_line}); the checkpoint is written in "
                        f"{folder} only: upload it once the hub is reachable (huggingface-cli upload {repo} "
                        f"{folder})") from err
    return f"pushed {folder} to https://huggingface.co/{repo}"


def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m retriever.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="retriever directory (e.g. OUTPUT_DIR/final) or published checkpoint")
    p.add_argument("--format", required=True, choices=sorted(LIBRARIES),
                   help="colpali: colpali-engine's Col* classes; transformers: Col*ForRetrieval, or DSE for dense")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--metrics", type=Path, default=None, help="an eval.retrieval metrics.json for the model card")
    p.add_argument("--push_to_hub", default=None, metavar="REPO", help="also upload the folder to this hub repo")
    p.add_argument("--compression", type=Path, default=None,
                   help="an eval.retrieval --compare compression.json whose table goes into the model card")
    add_index_arguments(p)
    add_dtype_argument(p, "auto", "weights dtype of the export (default: the checkpoint's own)")
    return p.parse_args(argv)


@cli
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for flag, path in (("--metrics", args.metrics), ("--compression", args.compression)):
        if path is not None and not path.exists():
            raise MissingInputError(f"{flag} {path} does not exist (the {path.name} eval.retrieval wrote)")
    check_outputs({"--out": args.out}, {**checkpoint_inputs("--model", args.model), "--metrics": args.metrics,
                                        "--compression": args.compression}, directories=("--out",))
    metrics = read_metrics(args.metrics) if args.metrics is not None else None
    source = resolve_checkpoint(args.model)
    encoder = load_encoder(source, dtype=args.dtype)
    fmt = target_format(encoder.config, args.format)
    index = index_settings(args)
    check_index_settings(index, multi_vector=encoder.multi_vector, depth=0, model=args.model)
    with_index = encoder.multi_vector and (not index.exact or args.compression is not None)
    card_index = index_section(index, args.compression) if with_index else None
    export(encoder, fmt, args.out)
    if with_index:
        write_text_atomic(args.out / "index_settings.json", json.dumps(index.to_dict(), indent=2) + "\n")
    card = model_card(fmt, encoder.config, source, args.push_to_hub or args.out.name,
                      _read_json(source / CONFIG_FILE), _read_json(source / TRAINING_ARGS_FILE), metrics, card_index)
    write_text_atomic(args.out / "README.md", card)
    print(f"wrote {fmt.library} {fmt.name} checkpoint to {args.out}")
    if args.push_to_hub:
        print(push_to_hub(args.out, args.push_to_hub))
    return 0


if __name__ == "__main__":
    sys.exit(main())
