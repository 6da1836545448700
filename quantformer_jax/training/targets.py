"""Teacher code targets for QuantCoder forecasting: the frozen tokenizer's codes as classes.

REFERENCE.md 3.1-3.2 with decisions F2, F3, F4:

* The teacher is the pretrained `VQTokenizer` used as a pure frozen function (no dead-code
  counting, F2): every patch of the FULL window (source and future) is encoded, bidirectionally,
  and quantised; the targets are the codes of the F / P future patches.
* Classes are the distinct codes the teacher emits over the train split (all L positions, all
  neurons, all train windows), in sorted code order: `class_codes[c]` is the code of class c.
* A code never seen in the train split (it can appear in val/test) maps to the class of the
  nearest KNOWN code in the affine-transformed codebook space C' (F3; the original used class 0).
  How often that happens is counted by the evaluation (`unseen_codes`).
* Class weights = sum(counts) / (C * counts_c), from the same counts over all positions (F4);
  they are the focal loss's alpha (a plain mean of w_y * CE, not torch's weighted mean).
* Predicted classes go back through the teacher's decoder (`forecast_embeddings` +
  `decode_embeddings`): the argmax class's code vector (the paper), or the expected code vector
  under the predicted class distribution (`config.decoding="expected"`, the default).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from quantformer_jax.models import masking
from quantformer_jax.models.tokenizer import VQTokenizer

# How QuantCoder's future-patch class logits become decoder inputs (`forecast_embeddings`).
DECODINGS = ("argmax", "expected")


def check_decoding(decoding: str) -> str:
    """`decoding` if it is one of DECODINGS, else a ValueError naming `config.decoding`."""
    if decoding not in DECODINGS:
        raise ValueError(f"config.decoding={decoding!r}: expected one of {DECODINGS}")
    return decoding


@dataclasses.dataclass(frozen=True)
class CodeClasses:
    """The code <-> class mapping built from the teacher's train-split codes.

    Attributes:
        class_codes: int32 [C] sorted codes seen in the train split (class c -> code).
        counts: int64 [C] occurrences of each class's code over all train positions.
        code_to_class: int32 [K] class of every code; an unseen code gets the class of its
            nearest known code in C' space.
        known: bool [K] whether a code was seen in the train split.
    """

    class_codes: np.ndarray
    counts: np.ndarray
    code_to_class: np.ndarray
    known: np.ndarray

    @property
    def num_classes(self) -> int:
        return int(len(self.class_codes))

    @property
    def codebook_size(self) -> int:
        return int(len(self.code_to_class))

    @property
    def class_weights(self) -> np.ndarray:
        """float32 [C] inverse-frequency weights sum(counts) / (C * counts_c) (REFERENCE F4)."""
        counts = self.counts.astype(np.float64)
        return (counts.sum() / (len(counts) * counts)).astype(np.float32)

    @property
    def most_frequent_class(self) -> int:
        return int(np.argmax(self.counts))

    def to_json(self) -> dict:
        return {
            "class_codes": self.class_codes.tolist(),
            "counts": self.counts.tolist(),
            "code_to_class": self.code_to_class.tolist(),
            "known": self.known.tolist(),
        }

    @classmethod
    def from_json(cls, d: dict) -> CodeClasses:
        return cls(
            class_codes=np.asarray(d["class_codes"], np.int32),
            counts=np.asarray(d["counts"], np.int64),
            code_to_class=np.asarray(d["code_to_class"], np.int32),
            known=np.asarray(d["known"], bool),
        )

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.to_json(), f)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> CodeClasses:
        with open(path) as f:
            return cls.from_json(json.load(f))

    def same_as(self, other: CodeClasses) -> bool:
        return all(
            np.array_equal(getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
        )


def build_code_classes(code_counts: np.ndarray, effective_codebook: np.ndarray) -> CodeClasses:
    """Builds the mapping from per-code train counts and the teacher's C'.

    Args:
        code_counts: int [K] occurrences of each code over the train split (all positions).
        effective_codebook: [K, d] the affine-transformed codebook C' the teacher searches.

    Returns:
        The CodeClasses (known codes map to their own class, unseen ones to the nearest known).

    Raises:
        ValueError: shapes disagree, or no code was seen at all.
    """
    counts = np.asarray(code_counts, np.int64)
    book = np.asarray(effective_codebook, np.float64)
    if counts.ndim != 1 or book.shape[0] != counts.shape[0]:
        raise ValueError(f"code counts {counts.shape} and codebook {book.shape} disagree on K")
    class_codes = np.flatnonzero(counts > 0).astype(np.int32)
    if len(class_codes) == 0:
        raise ValueError("the teacher produced no codes on the train split (empty split?)")
    known = counts > 0
    # [K, C] squared distances from every code to every known code.
    dist = np.sum(np.square(book[:, None, :] - book[None, class_codes, :]), axis=-1)
    code_to_class = np.argmin(dist, axis=1).astype(np.int32)
    # A known code is its own class even if another known code has an identical vector.
    code_to_class[class_codes] = np.arange(len(class_codes), dtype=np.int32)
    return CodeClasses(
        class_codes=class_codes,
        counts=counts[class_codes],
        code_to_class=code_to_class,
        known=known,
    )


def teacher_codes(
    teacher: VQTokenizer, teacher_params: dict, x: jax.Array, patch_len: int
) -> jax.Array:
    """The frozen teacher's codes of every patch of full windows (jit-friendly).

    Args:
        teacher: the pretrained tokenizer module.
        teacher_params: its 'params' collection.
        x: [B, N, T] full windows (source + future frames).
        patch_len: P.

    Returns:
        int32 [B, N, T // P] codes; the teacher is bidirectional, so a future patch's code also
        depends on the source patches (REFERENCE 3.2).
    """
    b, n, t = x.shape
    patches = masking.patchify(x.reshape(b * n, t), patch_len)  # [B*N, L, P]

    def encode(module: VQTokenizer, patches: jax.Array) -> jax.Array:
        return module.quantize(module.encode(patches, None, train=False))["codes"]

    codes = teacher.apply({"params": teacher_params}, patches, method=encode)
    return jax.lax.stop_gradient(codes).reshape(b, n, t // patch_len).astype(jnp.int32)


def decode_codes(
    teacher: VQTokenizer, teacher_params: dict, codes: jax.Array, *, raw_codebook: bool = False
) -> jax.Array:
    """Decodes codes [B, N, L] with the teacher's decoder into frames [B, N, L * P].

    `raw_codebook` looks up the raw C instead of C' (the original's F1 bug, faithful mode only).
    """
    z = code_embeddings(teacher, teacher_params, codes, raw_codebook=raw_codebook)
    return decode_embeddings(teacher, teacher_params, z)


def code_embeddings(
    teacher: VQTokenizer, teacher_params: dict, codes: jax.Array, *, raw_codebook: bool = False
) -> jax.Array:
    """The teacher's code vectors: int [...] -> [..., d] (C', or the raw C when `raw_codebook`)."""

    def lookup(module: VQTokenizer, codes: jax.Array) -> jax.Array:
        return module.quantizer.lookup(codes, raw_codebook=raw_codebook)

    return teacher.apply({"params": teacher_params}, codes, method=lookup)


def decode_embeddings(
    teacher: VQTokenizer, teacher_params: dict, z: jax.Array, *, num_future: int | None = None
) -> jax.Array:
    """Decodes token embeddings [B, N, L, d] with the teacher's decoder into frames [B, N, L * P].

    `decode_codes(codes)` is `decode_embeddings(code_embeddings(codes))`; this entry point also
    takes vectors that are not codebook rows (the expected embedding of `forecast_embeddings`).
    With `num_future`, only the last `num_future` patches are decoded ([B, N, num_future * P]):
    the same values (the decoder is bidirectional, so every token is still read), but its last
    layer skips the other positions (the real-time path, inference.py).
    """
    b, n, length, d = z.shape
    keep = None if num_future is None else slice(length - num_future, length)

    def decode(module: VQTokenizer, z: jax.Array) -> jax.Array:
        return module.decoder(z, train=False, output_tokens=keep)

    patches = teacher.apply(
        {"params": teacher_params}, z.reshape(b * n, length, d), method=decode
    )  # [B*N, L or num_future, P]
    return patches.reshape(b, n, -1)


def expected_embedding(probs: jax.Array, class_embeddings: jax.Array) -> jax.Array:
    """The probability-weighted mean code vector: probs [..., C] @ class vectors [C, d] -> [..., d].

    Full fp32 precision, so a one-hot `probs` gives exactly that class's code vector.
    """
    return jnp.einsum("...c,cd->...d", probs, class_embeddings, precision=jax.lax.Precision.HIGHEST)


def forecast_embeddings(
    teacher: VQTokenizer,
    teacher_params: dict,
    code_logits: jax.Array,
    source_codes: jax.Array,
    class_codes: jax.Array,
    *,
    decoding: str,
    raw_codebook: bool = False,
) -> jax.Array:
    """The token embeddings of the forecast window, ready for `decode_embeddings`.

    Source patches: the code vectors of `source_codes` (the student's frozen-codebook codes, F5).
    Future patches, by `decoding`:

    * "argmax": the code vector of the most likely class (the paper's prediction);
    * "expected": the expected code vector under the predicted class distribution,
      softmax(code_logits) @ C'[class_codes]. The decoder then reads the mean of the plausible
      codes instead of one sampled-looking shape, which lowers the forecast's variance.

    Args:
        teacher: the pretrained tokenizer module.
        teacher_params: its 'params'.
        code_logits: [B, N, Lf, C] class logits of the future patches.
        source_codes: int [B, N, Ls] codes of the source patches.
        class_codes: int [C] code of each class (`CodeClasses.class_codes`).
        decoding: "argmax" | "expected".
        raw_codebook: use the raw C instead of C' (faithful mode, REFERENCE F1).

    Returns:
        [B, N, Ls + Lf, d] embeddings.

    Raises:
        ValueError: an unknown `decoding`.
    """
    lookup = functools.partial(code_embeddings, teacher, teacher_params, raw_codebook=raw_codebook)
    class_codes = jnp.asarray(class_codes, jnp.int32)
    if decoding == "argmax":
        pred_classes = jnp.argmax(code_logits, axis=-1)  # [B, N, Lf]
        future = lookup(jnp.take(class_codes, pred_classes, axis=0))  # [B, N, Lf, d]
    elif decoding == "expected":
        probs = jax.nn.softmax(code_logits.astype(jnp.float32), axis=-1)  # [B, N, Lf, C]
        future = expected_embedding(probs, lookup(class_codes))  # [C, d] -> [B, N, Lf, d]
    else:
        check_decoding(decoding)
    source = lookup(source_codes)  # [B, N, Ls, d]
    return jnp.concatenate([source, future.astype(source.dtype)], axis=-2)


def effective_codebook(teacher: VQTokenizer, teacher_params: dict) -> np.ndarray:
    """[K, d] the teacher's affine-transformed codebook C'."""
    return np.asarray(
        teacher.apply({"params": teacher_params}, method=VQTokenizer.effective_codebook)
    )


def count_codes(codes: Iterable[tuple[np.ndarray, np.ndarray]], codebook_size: int) -> np.ndarray:
    """Occurrences of each code over (codes [B, N, L], valid [B]) batches: int64 [K]."""
    total = np.zeros((codebook_size,), np.int64)
    for batch_codes, valid in codes:
        kept = np.asarray(batch_codes)[np.asarray(valid, bool)]
        total += np.bincount(kept.reshape(-1), minlength=codebook_size)[:codebook_size]
    return total


def class_targets(codes: jax.Array, code_to_class: jax.Array, num_source_patches: int) -> jax.Array:
    """Classes of the future patches: codes [B, N, L] -> int32 [B, N, L - L_source]."""
    return jnp.take(code_to_class, codes[..., num_source_patches:], axis=0)


def unseen_count(
    codes: jax.Array, known: jax.Array, num_source_patches: int, valid: jax.Array
) -> jax.Array:
    """Number of future-patch codes of valid windows that the train split never produced."""
    future = codes[..., num_source_patches:]  # [B, N, Lf]
    unseen = ~jnp.take(known, future, axis=0)
    return jnp.sum(unseen & valid[:, None, None], dtype=jnp.int32)
