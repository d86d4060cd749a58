"""Tiny published-format checkpoints written by the reference classes themselves, and their reference forwards.

colpali-engine is imported as a bare package (its ``__init__`` imports torchvision, which does not import beside
this torch); its Qwen2-VL processors import ``smart_resize`` from the torchvision-backed image processor module and
``Qwen2VLProcessor`` insists on a video processor, so :func:`reference_processor` provides the PIL module's
``smart_resize`` and skips the processor's class check (the video processor is never used: no videos here).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import sys
import types
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ENGINE = "colpali_engine.models"


def colpali_engine_available() -> bool:
    return importlib.util.find_spec("colpali_engine") is not None


def import_engine(module: str) -> types.ModuleType:
    """A colpali-engine submodule, imported without running the package ``__init__``."""
    if "colpali_engine" not in sys.modules:
        root = importlib.util.find_spec("colpali_engine").submodule_search_locations[0]
        package = types.ModuleType("colpali_engine")
        package.__path__ = [root]
        sys.modules["colpali_engine"] = package
    root = sys.modules["colpali_engine"].__path__[0]
    for name in ("colpali_engine.models", *_parents(module)):  # bare subpackages too: their __init__ imports all
        if name not in sys.modules:
            sub = types.ModuleType(name)
            sub.__path__ = [str(Path(root, *name.split(".")[1:]))]
            sub.__getattr__ = _from_submodules(sub)
            sys.modules[name] = sub
    qwen_module = "transformers.models.qwen2_vl.image_processing_qwen2_vl"
    if qwen_module not in sys.modules:
        try:
            importlib.import_module(qwen_module)
        except ImportError:
            from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl

            stub = types.ModuleType(qwen_module)
            stub.smart_resize = image_processing_pil_qwen2_vl.smart_resize
            sys.modules[qwen_module] = stub
    return importlib.import_module(module)


def _from_submodules(package: types.ModuleType) -> Callable[[str], Any]:
    """A bare package's ``__getattr__``: a name its ``__init__`` would re-export, found in its own modules (so that
    ``from colpali_engine.models.qwen3.colqwen3 import ColQwen3Processor`` works on the bare package)."""
    def find(name: str) -> Any:
        for file in sorted(Path(package.__path__[0]).glob("*.py")):
            if file.stem != "__init__":
                found = importlib.import_module(f"{package.__name__}.{file.stem}")
                if hasattr(found, name):
                    return getattr(found, name)
        raise AttributeError(f"module {package.__name__!r} has no attribute {name!r}")
    return find


def _parents(module: str) -> list[str]:
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(3, len(parts))]


@contextmanager
def lenient_processor_init():
    """Lets processor classes be built without their (torchvision) video processor."""
    from transformers.processing_utils import ProcessorMixin

    original = ProcessorMixin.check_argument_for_proper_class
    ProcessorMixin.check_argument_for_proper_class = lambda self, name, arg: None
    try:
        yield
    finally:
        ProcessorMixin.check_argument_for_proper_class = original


@dataclass
class Reference:
    """A reference family: how to build its model and processor, and how its forward returns embeddings."""

    arch: str                      # retriever.tiny architecture of the backbone
    model: Callable[[Any], torch.nn.Module]
    processor: Callable[[Any, Any, Any], Any]
    dense: bool = False            # one vector per input (Bi*), else token vectors (Col*)


def _engine(module: str, cls: str) -> Callable[..., Any]:
    return lambda *args, **kwargs: getattr(import_engine(f"{ENGINE}.{module}"), cls)(*args, **kwargs)


def _tf_colqwen2(config: Any) -> torch.nn.Module:
    from transformers import ColQwen2Config, ColQwen2ForRetrieval

    return ColQwen2ForRetrieval(ColQwen2Config(vlm_config=config, embedding_dim=128))


def _tf_colpali(config: Any) -> torch.nn.Module:
    from transformers import ColPaliConfig, ColPaliForRetrieval

    return ColPaliForRetrieval(ColPaliConfig(vlm_config=config, embedding_dim=128))


def _tf_colmodernvbert(config: Any) -> torch.nn.Module:
    from transformers import ColModernVBertConfig, ColModernVBertForRetrieval

    return ColModernVBertForRetrieval(ColModernVBertConfig(vlm_config=config, embedding_dim=128))


def _tf_processor(name: str) -> Callable[..., Any]:
    def build(image_processor: Any, tokenizer: Any, config: Any) -> Any:
        import transformers

        kwargs = {}
        if name == "ColModernVBertProcessor":  # its default is the real model's 64 tokens per tile
            vision = config.vision_config
            tiles = (vision.image_size // vision.patch_size) ** 2
            kwargs["image_seq_len"] = int(tiles / config.pixel_shuffle_factor**2)
        return getattr(transformers, name)(image_processor=image_processor, tokenizer=tokenizer, **kwargs)
    return build


def _engine_processor(module: str, cls: str) -> Callable[..., Any]:
    def build(image_processor: Any, tokenizer: Any, config: Any) -> Any:
        kwargs = {}
        if cls == "ColIdefics3Processor":
            vision = config.vision_config
            kwargs["image_seq_len"] = int((vision.image_size // vision.patch_size) ** 2 / config.scale_factor**2)
        if cls in ("ColModernVBertProcessor", "BiModernVBertProcessor"):  # its default is the real model's 64
            tiles = (config.vision_config.image_size // config.vision_config.patch_size) ** 2
            kwargs["image_seq_len"] = int(tiles / config.pixel_shuffle_factor**2)
        if cls in ("ColGemmaProcessor3", "BiGemmaProcessor3"):  # its default is the real model's 256
            kwargs["image_seq_length"] = config.mm_tokens_per_image
        return _engine(module, cls)(image_processor=image_processor, tokenizer=tokenizer, **kwargs)
    return build


REFERENCES: dict[str, Reference] = {
    "engine_colqwen2": Reference("qwen2_vl", _engine("qwen2.colqwen2.modeling_colqwen2", "ColQwen2"),
                                 _engine_processor("qwen2.colqwen2.processing_colqwen2", "ColQwen2Processor")),
    "engine_colqwen2_5": Reference("qwen2_5_vl", _engine("qwen2_5.colqwen2_5.modeling_colqwen2_5", "ColQwen2_5"),
                                   _engine_processor("qwen2_5.colqwen2_5.processing_colqwen2_5",
                                                     "ColQwen2_5_Processor")),
    "engine_colqwen3": Reference("qwen3_vl", _engine("qwen3.colqwen3.modeling_colqwen3", "ColQwen3"),
                                 _engine_processor("qwen3.colqwen3.processing_colqwen3", "ColQwen3Processor")),
    "engine_biqwen3": Reference("qwen3_vl", _engine("qwen3.biqwen3.modeling_biqwen3", "BiQwen3"),
                                _engine_processor("qwen3.biqwen3.processing_biqwen3", "BiQwen3Processor"), dense=True),
    "engine_colqwen3_5": Reference("qwen3_5", _engine("qwen3_5.colqwen3_5.modeling_colqwen3_5", "ColQwen3_5"),
                                   _engine_processor("qwen3_5.colqwen3_5.processing_colqwen3_5",
                                                     "ColQwen3_5Processor")),
    "engine_biqwen3_5": Reference("qwen3_5", _engine("qwen3_5.biqwen3_5.modeling_biqwen3_5", "BiQwen3_5"),
                                  _engine_processor("qwen3_5.biqwen3_5.processing_biqwen3_5", "BiQwen3_5Processor"),
                                  dense=True),
    "engine_colgemma3": Reference("gemma3", _engine("gemma3.colgemma3.modeling_colgemma", "ColGemma3"),
                                  _engine_processor("gemma3.colgemma3.processing_colgemma", "ColGemmaProcessor3")),
    "engine_bigemma3": Reference("gemma3", _engine("gemma3.bigemma3.modeling_bigemma", "BiGemma3"),
                                 _engine_processor("gemma3.bigemma3.processing_bigemma", "BiGemmaProcessor3"),
                                 dense=True),
    "engine_colmodernvbert": Reference("modernvbert", _engine("modernvbert.colmodernvbert.modeling_colmodernvbert",
                                                              "ColModernVBert"),
                                       _engine_processor("modernvbert.colmodernvbert.processing_colmodernvbert",
                                                         "ColModernVBertProcessor")),
    "engine_bimodernvbert": Reference("modernvbert", _engine("modernvbert.bimodernvbert.modeling_bimodernvbert",
                                                             "BiModernVBert"),
                                      _engine_processor("modernvbert.bimodernvbert.processing_bimodernvbert",
                                                        "BiModernVBertProcessor"), dense=True),
    "engine_colpali": Reference("paligemma", _engine("paligemma.colpali.modeling_colpali", "ColPali"),
                                _engine_processor("paligemma.colpali.processing_colpali", "ColPaliProcessor")),
    "engine_colidefics3": Reference("idefics3", _engine("idefics3.colidefics3.modeling_colidefics3", "ColIdefics3"),
                                    _engine_processor("idefics3.colidefics3.processing_colidefics3",
                                                      "ColIdefics3Processor")),
    "tf_colqwen2": Reference("qwen2_vl", _tf_colqwen2, _tf_processor("ColQwen2Processor")),
    "tf_colpali": Reference("paligemma", _tf_colpali, _tf_processor("ColPaliProcessor")),
    "tf_colmodernvbert": Reference("modernvbert", _tf_colmodernvbert, _tf_processor("ColModernVBertProcessor")),
}


REFERENCE_CLASSES = {
    "engine_colqwen2": ("qwen2.colqwen2.modeling_colqwen2", "ColQwen2"),
    "engine_colqwen2_5": ("qwen2_5.colqwen2_5.modeling_colqwen2_5", "ColQwen2_5"),
    "engine_colqwen3": ("qwen3.colqwen3.modeling_colqwen3", "ColQwen3"),
    "engine_biqwen3": ("qwen3.biqwen3.modeling_biqwen3", "BiQwen3"),
    "engine_colqwen3_5": ("qwen3_5.colqwen3_5.modeling_colqwen3_5", "ColQwen3_5"),
    "engine_biqwen3_5": ("qwen3_5.biqwen3_5.modeling_biqwen3_5", "BiQwen3_5"),
    "engine_colgemma3": ("gemma3.colgemma3.modeling_colgemma", "ColGemma3"),
    "engine_bigemma3": ("gemma3.bigemma3.modeling_bigemma", "BiGemma3"),
    "engine_colmodernvbert": ("modernvbert.colmodernvbert.modeling_colmodernvbert", "ColModernVBert"),
    "engine_bimodernvbert": ("modernvbert.bimodernvbert.modeling_bimodernvbert", "BiModernVBert"),
    "engine_colpali": ("paligemma.colpali.modeling_colpali", "ColPali"),
    "engine_colidefics3": ("idefics3.colidefics3.modeling_colidefics3", "ColIdefics3"),
}


def load_reference(name: str, path: Path) -> torch.nn.Module:
    """The reference class of ``name`` loading ``path`` with its own ``from_pretrained`` (fp32, eval).

    colpali-engine 0.3.18's ``BiGemma3.from_pretrained`` reads ``Gemma3Model._checkpoint_conversion_mapping``, which
    transformers 5 no longer has, unless a ``key_mapping`` is given: it gets the empty one (what ``ColGemma3`` uses
    there, less its projection's rename)."""
    kwargs = {"key_mapping": {}} if name == "engine_bigemma3" else {}
    if name in REFERENCE_CLASSES:
        module, cls = REFERENCE_CLASSES[name]
        model_cls = getattr(import_engine(f"{ENGINE}.{module}"), cls)
    else:
        import transformers

        model_cls = getattr(transformers, {"tf_colqwen2": "ColQwen2ForRetrieval", "tf_colpali": "ColPaliForRetrieval",
                                           "tf_colmodernvbert": "ColModernVBertForRetrieval"}[name])
    return model_cls.from_pretrained(path, dtype=torch.float32, **kwargs).eval()


def build_reference(name: str, tiny_dir: Path, out: Path, seed: int = 0) -> tuple[torch.nn.Module, Any]:
    """Writes the reference model ``name`` (random weights on the tiny backbone config) with ``save_pretrained``
    plus the tiny tokenizer / image-processor files to ``out``; returns the model (fp32, eval) and its processor."""
    from transformers import AutoConfig, AutoTokenizer

    from retriever.model.saved import load_image_processor

    ref = REFERENCES[name]
    config = AutoConfig.from_pretrained(tiny_dir)
    torch.manual_seed(seed)
    model = ref.model(config).float().eval()
    _randomise_head(model)
    model.save_pretrained(out, safe_serialization=True)
    copy_processor_files(tiny_dir, out)
    with lenient_processor_init():
        processor = ref.processor(load_image_processor(tiny_dir), AutoTokenizer.from_pretrained(tiny_dir), config)
    return model, processor


def _randomise_head(model: torch.nn.Module) -> None:
    """Projection weights far from their (near-zero) init, so errors in the head show."""
    for name, module in model.named_modules():
        if name.split(".")[-1] in ("custom_text_proj", "embedding_proj_layer", "linear"):
            torch.nn.init.normal_(module.weight, std=0.2)
            torch.nn.init.normal_(module.bias, std=0.2)


def write_adapter(model: torch.nn.Module, base: Path, out: Path, target_modules: str, seed: int = 1
                  ) -> torch.nn.Module:
    """A peft LoRA adapter repo on ``model`` (random non-zero LoRA weights), naming ``base`` by path, with the
    processor files copied (as published adapter repos ship them); returns the peft model (eval)."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False, target_modules=target_modules)
    peft_model = get_peft_model(model, lora).eval()
    peft_model.save_pretrained(out)
    copy_processor_files(base, out)
    config = json.loads((out / "adapter_config.json").read_text())
    (out / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": str(base)}))
    return peft_model


def copy_processor_files(src: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)


def reference_embeddings(model: torch.nn.Module, processor: Any, queries: Sequence[str],
                         images: Sequence[Image.Image]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The reference forward's unpadded query and page embeddings, one input at a time (no padding at all)."""
    with torch.no_grad():
        q = [_unpadded(model, processor.process_queries([t])) for t in queries]
        p = [_unpadded(model, processor.process_images([im])) for im in images]
    return q, p


def _unpadded(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    out = model(**batch)
    emb = out.embeddings if hasattr(out, "embeddings") else out
    if emb.dim() == 2:  # a dense model: one vector
        return emb[0].float()
    return emb[0][batch["attention_mask"][0].bool()].float()


def sample_images(count: int = 2, seed: int = 0) -> list[Image.Image]:
    """Random RGB images of different sizes and aspect ratios."""
    rng = np.random.default_rng(seed)
    sizes = [(60, 40), (40, 90), (70, 70)][:count]
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for w, h in sizes]
