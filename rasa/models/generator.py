"""The fixed RTD generator of f-RTD (paper Table 4; §4.4 "Analysis of SA").

The paper follows DiffCSE and uses DistilBERT as a *fixed* generator: a masked language model
trained once, never updated while RaSa trains, whose samples replace the masked tokens that
the RTD head must detect. Offline there is no DistilBERT to download, so by default we train a
small BERT-layout MLM (text only, no image) once on the training captions of the token cache
(:func:`train_generator`) and freeze it. A local Hugging Face masked-LM directory (e.g. a
DistilBERT checkpoint the user placed on disk) can be loaded instead (:func:`load_generator`);
its vocabulary must be the token cache's.

The generator answers one question: vocabulary logits at given (row, column) positions of a
batch of token ids (:meth:`FixedGenerator.logits_at`), as the online/momentum models do.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm import tqdm

from rasa.config import generator_path as default_generator_path
from rasa.errors import ConfigError
from rasa.io import torch_save
from rasa.models.bert import MLMHead, TextEncoder, init_bert_weights
from rasa.models.config import ModelConfig
from rasa.objectives import SpecialTokens, mask_tokens, mlm_loss

CHECKPOINT_KIND = "rasa-rtd-generator"


@dataclass(frozen=True)
class GeneratorConfig:
    """Size of the small generator (a few hundred thousand parameters by default)."""

    vocab_size: int
    width: int = 128
    layers: int = 2
    heads: int = 2
    intermediate: int = 512
    max_len: int = 128
    pad_id: int = 0
    init_std: float = 0.02

    def model_config(self) -> ModelConfig:
        """The BERT layout of :mod:`rasa.models.bert` with every layer text-only."""
        return ModelConfig(
            name="rtd-generator",
            vocab_size=self.vocab_size,
            text_width=self.width,
            text_heads=self.heads,
            text_intermediate=self.intermediate,
            num_layers=self.layers,
            fusion_layer=self.layers,
            max_position_embeddings=self.max_len,
            pad_token_id=self.pad_id,
            init_std=self.init_std,
        )


class FixedGenerator(nn.Module):
    """A frozen masked LM: ``logits_at(ids, mask, positions) -> [P, V]``."""

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        self.config = config
        self.meta: dict[str, Any] = {}  # provenance (training settings, token cache key)
        mc = config.model_config()
        self.encoder = TextEncoder(mc)
        self.head = MLMHead(mc, self.encoder.embeddings.word_embeddings)
        init_bert_weights(self.encoder, config.init_std)
        init_bert_weights(self.head.transform, config.init_std)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    def hidden(self, ids: Tensor, mask: Tensor) -> Tensor:
        return self.encoder.forward_text(ids, mask)

    def logits_at(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        """Vocabulary logits [P, V] at ``positions`` [P, 2] of ``ids`` [B, L]."""
        h = self.hidden(ids, mask)
        return self.head(h[positions[:, 0], positions[:, 1]])

    def save(self, path: str | os.PathLike, meta: dict[str, Any] | None = None) -> None:
        """Write ``{kind, config, state_dict, meta}`` atomically (``meta``: provenance)."""
        torch_save(
            {
                "kind": CHECKPOINT_KIND,
                "config": asdict(self.config),
                "state_dict": self.state_dict(),
                "meta": dict(meta or {}),
            },
            path,
        )


class HFGenerator(nn.Module):
    """A local Hugging Face masked LM (e.g. DistilBERT) behind the same ``logits_at``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    @property
    def vocab_size(self) -> int:
        return int(self.model.config.vocab_size)

    def logits_at(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        logits = self.model(input_ids=ids, attention_mask=mask).logits  # [B, L, V]
        return logits[positions[:, 0], positions[:, 1]]


def load_generator(path: str | os.PathLike, vocab_size: int | None = None) -> nn.Module:
    """A frozen generator in eval mode from our checkpoint file or a local HF model directory.

    ``vocab_size`` (the token cache's) is checked when given.
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ConfigError(
                f"{path}: not a Hugging Face model directory (no config.json); expected a "
                "local masked-LM checkpoint such as distilbert-base-uncased or a generator "
                "file written by rasa.models.generator.train_generator."
            )
        from transformers import AutoModelForMaskedLM  # heavy import, only on this path

        gen: nn.Module = HFGenerator(
            AutoModelForMaskedLM.from_pretrained(path, local_files_only=True)
        )
    elif path.is_file():
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - truncated, not a torch file, or a pickle payload
            raise ConfigError(
                f"{path}: not a readable RTD generator file ({type(exc).__name__}; truncated, "
                "or objects other than tensors and plain data, which are never unpickled). "
                "Remove it: `rasa generator` trains it again."
            ) from exc
        if not isinstance(ckpt, dict) or ckpt.get("kind") != CHECKPOINT_KIND:
            raise ConfigError(
                f"{path}: not an RTD generator checkpoint (expected a dict with kind "
                f"{CHECKPOINT_KIND!r}, 'config' and 'state_dict')."
            )
        try:
            gen = FixedGenerator(GeneratorConfig(**ckpt["config"]))
            gen.load_state_dict(ckpt["state_dict"])
        except (KeyError, TypeError, RuntimeError) as exc:
            raise ConfigError(
                f"{path}: RTD generator file with a config or weights that do not fit "
                f"({type(exc).__name__}: {str(exc).splitlines()[0]}); remove it to retrain."
            ) from exc
        gen.meta = dict(ckpt.get("meta") or {})
    else:
        raise ConfigError(f"RTD generator {path} does not exist; train one with train_generator.")
    if vocab_size is not None and gen.vocab_size != vocab_size:
        raise ConfigError(
            f"RTD generator {path} has a vocabulary of {gen.vocab_size} tokens but the token "
            f"cache has {vocab_size}: the generator must use the cache's tokenizer."
        )
    return freeze(gen)


def freeze(gen: nn.Module) -> nn.Module:
    gen.eval()
    for p in gen.parameters():
        p.requires_grad_(False)
    return gen


def train_generator(
    ids: np.ndarray | Tensor,
    mask: np.ndarray | Tensor,
    tokens: SpecialTokens,
    vocab_size: int,
    out: str | os.PathLike | None = None,
    config: GeneratorConfig | None = None,
    steps: int = 1000,
    batch_size: int = 64,
    lr: float = 5e-4,
    p_mask: float = 0.15,
    seed: int = 0,
    device: str | torch.device = "cpu",
    progress: bool = True,
    meta: dict[str, Any] | None = None,
) -> FixedGenerator:
    """Train the small generator by BERT MLM on token-cache rows; save it when ``out`` is given.

    ``ids``/``mask`` are the training split's rows of the token cache ([N, max_len]). Each step
    draws a random batch (seeded), trims padding, masks with the BERT 80/10/10 rule and takes an
    AdamW step. Returns the frozen generator (eval mode, no gradients).
    """
    ids_t = torch.as_tensor(np.asarray(ids), dtype=torch.long)
    mask_t = torch.as_tensor(np.asarray(mask), dtype=torch.long)
    if ids_t.ndim != 2 or ids_t.shape != mask_t.shape or ids_t.shape[0] == 0:
        raise ConfigError(
            f"train_generator: expected token ids and mask of the same shape [N, L] with N > 0, "
            f"got {tuple(ids_t.shape)} and {tuple(mask_t.shape)}."
        )
    config = config or GeneratorConfig(
        vocab_size=vocab_size, pad_id=tokens.pad, max_len=max(128, ids_t.shape[1])
    )
    if config.max_len < ids_t.shape[1]:
        raise ConfigError(
            f"train_generator: captions have {ids_t.shape[1]} tokens, more than the generator's "
            f"max_len {config.max_len}."
        )
    torch.manual_seed(seed)
    rng = torch.Generator().manual_seed(seed)
    gen = FixedGenerator(config).to(device).train()
    opt = torch.optim.AdamW(gen.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    bar = tqdm(range(steps), desc="train RTD generator", disable=not progress)
    for _ in bar:
        rows = torch.randint(ids_t.shape[0], (min(batch_size, ids_t.shape[0]),), generator=rng)
        b_ids, b_mask = ids_t[rows], mask_t[rows]
        width = int(b_mask.sum(dim=1).max())
        b_ids, b_mask = b_ids[:, :width].to(device), b_mask[:, :width].to(device)
        inp, labels, masked = mask_tokens(b_ids, b_mask, p_mask, vocab_size, tokens, rng)
        if not bool(masked.any()):
            continue
        pos = masked.nonzero()
        loss = mlm_loss(gen.logits_at(inp, b_mask, pos), labels[masked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    gen = freeze(gen)
    gen.meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, **(meta or {})}
    if out is not None:
        gen.save(out, gen.meta)
    return gen  # type: ignore[return-value]


def train_generator_from_cache(
    annotations: Any, cache: Any, out: str | os.PathLike, split: str = "train", **kwargs: Any
) -> FixedGenerator:
    """Train the f-RTD generator on the ``split`` captions of a token cache and save it to ``out``.

    ``annotations`` is the :class:`rasa.data.annotations.Annotations` the cache was built from
    (``cache`` a :class:`rasa.data.token_cache.TokenCache`); other arguments go to
    :func:`train_generator`. Only training captions are seen, so no test text leaks in.
    """
    rows = np.array([k for k, _, _ in annotations.captions(split)], dtype=np.int64)
    if rows.size == 0:
        raise ConfigError(f"train_generator_from_cache: split {split!r} has no captions.")
    if rows.max() >= len(cache):
        raise ConfigError(
            f"token cache {getattr(cache, 'path', None) or '(in memory)'} has {len(cache)} rows "
            f"but the annotations number captions up to {int(rows.max())}; rebuild the cache."
        )
    return train_generator(
        cache.ids[rows],
        cache.mask[rows],
        SpecialTokens.from_meta(cache.meta),
        cache.vocab_size,
        out=out,
        **kwargs,
    )


def load_or_train_generator(
    cfg: Any, annotations: Any, cache: Any, device: str | torch.device = "cpu", **kwargs: Any
) -> nn.Module:
    """The f-RTD generator of an experiment, trained once per token cache and then reused.

    ``cfg`` is the :class:`rasa.config.ExperimentConfig`. A user checkpoint is taken from
    ``model.extra.rtd_generator`` (our generator file or a local Hugging Face masked-LM
    directory such as DistilBERT, with the cache's vocabulary). Otherwise the generator is
    read from :func:`default_generator_path` when it was trained on this very cache (its
    ``cache_key``), else trained on the cache's training captions (seed 0, so every seed and
    variant of a dataset shares it) and written there atomically. ``kwargs`` go to
    :func:`train_generator`.
    """
    extra = (getattr(cfg, "model", None) or {}).get("extra") or {}
    user = extra.get("rtd_generator")
    if user:
        return load_generator(user, vocab_size=cache.vocab_size).to(device)
    return ensure_generator(
        annotations, cache, default_generator_path(cfg.tokens), device, **kwargs
    )


def ensure_generator(
    annotations: Any,
    cache: Any,
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> nn.Module:
    """The generator at ``path`` if it was trained on this very cache (its ``cache_key``), else
    one trained now on the cache's training captions (seed 0) and written there atomically.
    ``rasa generator`` calls this as the workflow's own step, before the f-RTD runs."""
    key = str(cache.meta.get("key", ""))
    path = Path(path)
    if path.is_file():
        try:
            gen = load_generator(path, vocab_size=cache.vocab_size)
        except ConfigError:
            gen = None  # stale or foreign file: retrain over it
        if gen is not None and getattr(gen, "meta", {}).get("cache_key") == key:
            return gen.to(device)
    gen = train_generator_from_cache(
        annotations, cache, path, device=device, meta={"cache_key": key}, **kwargs
    )
    return gen.to(device)


def generator_info(gen: Any) -> dict[str, Any]:
    """A small JSON-able description for logs and checkpoints."""
    if isinstance(gen, FixedGenerator):
        return {"kind": "fixed", **asdict(gen.config)}
    return {"kind": "hf", "vocab_size": getattr(gen, "vocab_size", None)}
