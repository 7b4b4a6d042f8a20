"""Chapter 9: contrastive image-text pretraining (CLIP, Radford et al. 2021), in miniature.

Chapter 6's shapes images get captions generated from what was drawn ("a photo of a small red
circle left of a big blue square"); a ViT image encoder and a small text transformer map images
and captions into one space where matching pairs are close::

    images (B, 3, S, S) -> ViT -> (B, E), normalized      captions -> tokens (B, L) -> text transformer -> (B, E)
    logits = exp(logit_scale) * image_emb @ text_emb.T    (B, B), the pairs on the diagonal
    loss = (CE(logits, diag) + CE(logits.T, diag)) / 2    the symmetric InfoNCE loss

The temperature is learned as ``logit_scale = log(1 / temperature)``, starting at 1/0.07 and
clamped to at most 100, as in CLIP. Zero-shot classification embeds one prompt per class
("a photo of a circle") and picks the closest.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from minivit.data.shapes import COLOR_NAMES, SHAPE_CLASSES
from minivit.devices import get_device, module_device
from minivit.transformer import Encoder
from minivit.vit import ViT

PAD, EOS, UNK = "<pad>", "<eos>", "<unk>"
SIZE_WORDS = ("small", "big")
RELATIONS = ("left of", "right of", "above", "below")
PREFIX = "a photo of"
MAX_LOGIT_SCALE = math.log(100.0)  # CLIP clamps the learned scale at 100


# ----------------------------------------------------------------------------- captions and tokens


def describe_object(label: int, color: int, width: float, small_below: float = 0.27) -> str:
    """One shape in words: 'a small red circle' (``width`` is the box's, as a fraction of the image)."""
    size = SIZE_WORDS[0] if width < small_below else SIZE_WORDS[1]
    return f"a {size} {COLOR_NAMES[color]} {SHAPE_CLASSES[label]}"


def relation(first_box: torch.Tensor, second_box: torch.Tensor) -> str:
    """Where the first cxcywh box lies relative to the second, along the axis where they are further apart."""
    dx, dy = float(first_box[0] - second_box[0]), float(first_box[1] - second_box[1])
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"  # image rows grow downwards


def caption(target: dict, small_below: float = 0.27) -> str:
    """A caption of a shapes target, deterministic: 'a photo of a small red circle left of a big blue square'.

    The first two shapes are described (the second relative to the first); any others are added with 'and'.
    A shape is 'small' when its box is narrower than ``small_below`` of the image (make_shapes' default
    sizes, 0.15 to 0.4, split in the middle).
    """
    if "colors" not in target:
        raise ValueError("the target has no 'colors'; make the images with "
                         "minivit.data.shapes.make_shapes(..., record_colors=True)")
    labels, boxes, colors = target["labels"], target["boxes"], target["colors"]
    if len(labels) == 0:
        return f"{PREFIX} nothing"
    words = [describe_object(int(labels[i]), int(colors[i]), float(boxes[i, 2]), small_below)
             for i in range(len(labels))]
    text = f"{PREFIX} {words[0]}"
    if len(words) > 1:
        text += f" {relation(boxes[0], boxes[1])} {words[1]}"
    for extra in words[2:]:
        text += f" and {extra}"
    return text


def caption_vocabulary() -> list[str]:
    """Every word a caption or a prompt of this chapter can use."""
    words = set(f"{PREFIX} a and nothing".split()) | set(SIZE_WORDS) | set(COLOR_NAMES) | set(SHAPE_CLASSES)
    words |= {word for rel in RELATIONS for word in rel.split()}
    return sorted(words)


@dataclass
class WordTokenizer:
    """Words to ids and back: ids 0, 1, 2 are padding, end of text and unknown words; then ``words``."""

    words: list[str] = field(default_factory=caption_vocabulary)

    def __post_init__(self):
        self.itos = [PAD, EOS, UNK] + [w for w in self.words if w not in (PAD, EOS, UNK)]
        self.stoi = {word: index for index, word in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, texts: str | list[str], length: int = 16) -> torch.Tensor:
        """Texts -> ids (B, length): the words, then EOS, then padding. Too long a text is an error."""
        single = isinstance(texts, str)
        rows = []
        for text in [texts] if single else texts:
            ids = [self.stoi.get(word, self.stoi[UNK]) for word in text.lower().split()] + [self.stoi[EOS]]
            if len(ids) > length:
                raise ValueError(f"{text!r} has {len(ids) - 1} words, more than length - 1 = {length - 1}; "
                                 f"pass a larger length")
            rows.append(ids + [self.stoi[PAD]] * (length - len(ids)))
        ids = torch.tensor(rows, dtype=torch.int64)  # (B, length)
        return ids[0] if single else ids

    def decode(self, ids: torch.Tensor) -> str | list[str]:
        """Ids (length,) or (B, length) -> text(s), up to EOS."""
        if ids.dim() == 2:
            return [self.decode(row) for row in ids]
        words = []
        for index in ids.tolist():
            if self.itos[index] in (EOS, PAD):
                break
            words.append(self.itos[index])
        return " ".join(words)


# ----------------------------------------------------------------------------- the two encoders and the loss


class TextTransformer(nn.Module):
    """Token ids (B, L) -> one vector per text (B, out_dim): embeddings + positions, pre-norm encoder,
    the output at the EOS token (as CLIP), a linear projection. Padding is masked out of the attention."""

    def __init__(self, vocab_size: int, out_dim: int, dim: int = 64, depth: int = 2, num_heads: int = 4,
                 max_length: int = 16, eos_id: int = 1, pad_id: int = 0):
        super().__init__()
        self.eos_id, self.pad_id, self.max_length = eos_id, pad_id, max_length
        self.token_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Parameter(torch.randn(1, max_length, dim) * 0.02)
        self.encoder = Encoder(dim, depth, num_heads, 2 * dim)
        self.proj = nn.Linear(dim, out_dim, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[1] > self.max_length or ids.dtype != torch.int64:
            raise ValueError(f"ids must be int64 (B, L <= {self.max_length}), got {ids.dtype} {tuple(ids.shape)}; "
                             f"use WordTokenizer.encode(texts, length={self.max_length})")
        eos = (ids == self.eos_id).int().argmax(dim=1)  # (B,) the first EOS
        if not bool((ids.gather(1, eos[:, None]) == self.eos_id).all()):
            raise ValueError("every row of ids needs an EOS token; encode texts with WordTokenizer.encode")
        x = self.token_embed(ids) + self.pos_embed[:, :ids.shape[1]]  # (B, L, dim)
        may_attend = (ids != self.pad_id)[:, None, None, :]  # (B, 1, 1, L): no query attends to padding
        x = self.encoder(x, attn_mask=may_attend)  # (B, L, dim)
        return self.proj(x[torch.arange(len(ids), device=ids.device), eos])  # (B, out_dim)


def clip_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss of normalized embeddings (B, E), image i paired with text i."""
    if image_emb.shape != text_emb.shape or image_emb.dim() != 2:
        raise ValueError(f"image_emb and text_emb must both be (B, E), got {tuple(image_emb.shape)} and "
                         f"{tuple(text_emb.shape)}")
    logits = logit_scale.exp() * image_emb @ text_emb.T  # (B, B): images x texts
    targets = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class MiniCLIP(nn.Module):
    """A ViT image encoder (its head projects to ``embed_dim``) and a :class:`TextTransformer`, one temperature."""

    def __init__(self, vocab_size: int, embed_dim: int = 64, image_size: int = 32, patch_size: int = 4,
                 dim: int = 64, depth: int = 3, num_heads: int = 4, text_dim: int = 64, text_depth: int = 2,
                 max_length: int = 16, temperature: float = 0.07):
        super().__init__()
        self.image_encoder = ViT(image_size=image_size, patch_size=patch_size, num_classes=embed_dim, dim=dim,
                                 depth=depth, num_heads=num_heads, mlp_dim=2 * dim)
        nn.init.normal_(self.image_encoder.head.weight, std=dim**-0.5)  # ViT's classifier head starts at zero
        self.text_encoder = TextTransformer(vocab_size, embed_dim, text_dim, text_depth, num_heads, max_length)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / temperature)))

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The ViT's pooled features before the projection (B, dim): what a linear probe reads."""
        return self.image_encoder.forward_features(images)[:, 0]

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_encoder(images), dim=-1)  # (B, E), unit length

    def encode_text(self, ids: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.text_encoder(ids), dim=-1)  # (B, E), unit length

    def clamp_logit_scale(self) -> None:
        with torch.no_grad():
            self.logit_scale.clamp_(0.0, MAX_LOGIT_SCALE)

    def forward(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """The loss of a batch of matching (image, caption) pairs."""
        return clip_loss(self.encode_image(images), self.encode_text(ids), self.logit_scale)


# ----------------------------------------------------------------------------- training and evaluation


def train_clip(model: MiniCLIP, images: torch.Tensor, ids: torch.Tensor, steps: int, batch_size: int = 128,
               lr: float = 2e-3, weight_decay: float = 0.05, seed: int = 0,
               device: torch.device | str | None = None) -> dict[str, list[float]]:
    """Train on (image, caption ids) pairs with AdamW and a cosine schedule; returns per-step loss and temperature.

    ``images`` are normalized floats (N, 3, S, S); batches are drawn at random (with a seeded generator).
    The model moves to ``device`` (default: :func:`minivit.devices.get_device`) and stays there.
    """
    if len(images) != len(ids) or len(images) < batch_size:
        raise ValueError(f"need as many images as captions and at least batch_size={batch_size}, got "
                         f"{len(images)} images and {len(ids)} captions")
    device = torch.device(device) if device is not None else get_device()
    model.to(device)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embed" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embed" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": other, "weight_decay": 0.0}], lr=lr)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, lr, total_steps=steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(seed)
    history = {"loss": [], "temperature": []}
    model.train()
    for _ in range(steps):
        batch = torch.randperm(len(images), generator=generator)[:batch_size]
        loss = model(images[batch].to(device), ids[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        model.clamp_logit_scale()
        history["loss"].append(loss.item())
        history["temperature"].append(1.0 / model.logit_scale.exp().item())
    model.eval()
    return history


@torch.no_grad()
def embed_images(model: MiniCLIP, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Unit image embeddings (N, E) on the CPU of normalized images (N, 3, S, S), wherever the model is."""
    model.eval()
    return torch.cat([model.encode_image(images[i:i + batch_size].to(module_device(model))).cpu()
                      for i in range(0, len(images), batch_size)])


@torch.no_grad()
def embed_texts(model: MiniCLIP, ids: torch.Tensor) -> torch.Tensor:
    """Unit text embeddings (N, E) on the CPU of token ids (N, L), wherever the model is."""
    model.eval()
    return model.encode_text(ids.to(module_device(model))).cpu()


def class_embeddings(model: MiniCLIP, tokenizer: WordTokenizer, prompts: list[list[str]]) -> torch.Tensor:
    """One unit vector per class (K, E) from its prompts (a list per class, averaged: prompt ensembling)."""
    rows = [F.normalize(embed_texts(model, tokenizer.encode(class_prompts, model.text_encoder.max_length)).mean(0),
                        dim=-1) for class_prompts in prompts]
    return torch.stack(rows)  # (K, E)


def zero_shot_logits(model: MiniCLIP, images: torch.Tensor, class_emb: torch.Tensor,
                     batch_size: int = 500) -> torch.Tensor:
    """Cosine similarities (N, K) of normalized images (N, 3, S, S) with the class embeddings (K, E)."""
    return embed_images(model, images, batch_size) @ class_emb.T


@torch.no_grad()
def image_features(model: MiniCLIP, images: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Frozen image features (N, dim) for a linear probe."""
    model.eval()
    return torch.cat([model.image_features(images[i:i + batch_size].to(module_device(model))).cpu()
                      for i in range(0, len(images), batch_size)])


def fit_linear_probe(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                     weight_decay: float = 1e-3, steps: int = 100) -> nn.Module:
    """Logistic regression on frozen features (N, F), full batch with L-BFGS; returns a (N, F) -> (N, K) module.

    The features are standardized with the training set's mean and std (part of the returned module).
    """
    if len(features) != len(labels):
        raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
    mean, std = features.mean(0), features.std(0) + 1e-6
    linear = nn.Linear(features.shape[1], num_classes)
    x = (features - mean) / std
    optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x), labels) + weight_decay * linear.weight.square().sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return nn.Sequential(_Standardize(mean, std), linear).eval()


class _Standardize(nn.Module):
    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("std", std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std
