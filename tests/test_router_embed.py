"""routing/embed.py: BERT's uncased WordPiece tokenisation in pure Python, the safetensors reader
and the numpy BERT forward used to distil the static sentence-embedding table."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from voxroute.routing.embed import Bert, StaticEmbeddings, WordPiece, basic_words, read_safetensors, save

VOCAB = [
    "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]",
    "i", "was", "charged", "twice", "for", "my", "order", "cafe", "naive", "resume",
    "un", "##aff", "##ord", "##able", "afford", "##ab", "want", "refund", "ref", "##und",
    ",", ".", "!", "?", "'", "s", "it", "$", "5", "##0", "0", "x", "中", "文", "test",
]  # fmt: skip

SAMPLES = [
    "I was charged twice for my order!",
    "Café naïve Résumé",
    "unaffordable, it's $50.00?",
    "I want my REFUND\tnow\n",
    "ref##und refund",
    "x" * 150,
    "中文test",
    "\u200bi\u200d was\x00 charged\ufffd",
    "",
    "   ",
    "😡😡 refund 🙏",
    "मेरा refund अभी",
]


def test_basic_words_split_like_bert():
    assert basic_words("Hello, World!") == ["hello", ",", "world", "!"]
    assert basic_words("Café naïve") == ["cafe", "naive"]  # lower case, accents stripped
    assert basic_words("it's $50.00") == ["it", "'", "s", "$", "50", ".", "00"]
    assert basic_words("中文test") == ["中", "文", "test"]  # CJK ideographs stand alone
    assert basic_words("a\u200bb\x00c") == ["abc"]  # format and control characters dropped
    assert basic_words(" \t\n ") == []


def test_wordpiece_greedy_longest_match():
    wp = WordPiece(VOCAB)
    assert wp.tokens("unaffordable") == ["un", "##aff", "##ord", "##able"]
    assert wp.tokens("afford refund") == ["afford", "refund"]
    assert wp.tokens("refundx") == ["[UNK]"]  # a part not in the vocabulary: the whole word is [UNK]
    assert wp.tokens("x" * 101) == ["[UNK]"]  # longer than BERT's 100 characters
    assert wp.tokens("I was charged twice!") == ["i", "was", "charged", "twice", "!"]
    assert len(wp.ids("i " * 1000)) == 256  # a turn's first MAX_TOKENS tokens only
    assert wp.ids("x" * 10_000 + " i") == [VOCAB.index("[UNK]")]  # only the first MAX_TEXT_CHARS are read


def test_wordpiece_matches_the_reference_tokenizer():
    """The same vocabulary in Hugging Face's tokenizers (BERT normaliser, pre-tokeniser, WordPiece)
    gives the same tokens on every sample."""
    tokenizers = pytest.importorskip("tokenizers", reason="the reference tokenizer is not installed")
    ref = tokenizers.Tokenizer(
        tokenizers.models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]")
    )
    ref.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
    ref.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
    wp = WordPiece(VOCAB)
    for text in SAMPLES:
        assert wp.tokens(text) == ref.encode(text, add_special_tokens=False).tokens, text


def _write_safetensors(path, tensors: dict[str, np.ndarray]) -> None:
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    head = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(head)) + head + b"".join(blobs))


def _tiny_bert(tmp_path, hidden=8, heads=2, layers=2, inter=16):
    rng = np.random.default_rng(0)
    w = {
        "embeddings.word_embeddings.weight": rng.normal(size=(len(VOCAB), hidden)),
        "embeddings.position_embeddings.weight": rng.normal(size=(16, hidden)),
        "embeddings.token_type_embeddings.weight": rng.normal(size=(2, hidden)),
        "embeddings.LayerNorm.weight": np.ones(hidden),
        "embeddings.LayerNorm.bias": np.zeros(hidden),
    }
    for i in range(layers):
        p = f"encoder.layer.{i}."
        for name, shape in {
            "attention.self.query": (hidden, hidden),
            "attention.self.key": (hidden, hidden),
            "attention.self.value": (hidden, hidden),
            "attention.output.dense": (hidden, hidden),
            "intermediate.dense": (inter, hidden),
            "output.dense": (hidden, inter),
        }.items():
            w[p + name + ".weight"] = rng.normal(size=shape) * 0.3
            w[p + name + ".bias"] = rng.normal(size=shape[0]) * 0.1
        for ln in ("attention.output.LayerNorm", "output.LayerNorm"):
            w[p + ln + ".weight"] = np.ones(hidden)
            w[p + ln + ".bias"] = np.zeros(hidden)
    _write_safetensors(tmp_path / "model.safetensors", w)
    config = {
        "hidden_size": hidden, "num_attention_heads": heads, "num_hidden_layers": layers,
        "layer_norm_eps": 1e-12,
    }  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "tokenizer.json").write_text(
        json.dumps({"model": {"vocab": {t: i for i, t in enumerate(VOCAB)}}})
    )
    return w


def test_safetensors_are_read_with_numpy(tmp_path):
    w = _tiny_bert(tmp_path)
    got = read_safetensors(tmp_path / "model.safetensors")
    assert set(got) == set(w)
    for name, a in w.items():
        assert got[name].shape == a.shape and np.allclose(got[name], a.astype(np.float32)), name


def test_bert_forward_pads_and_pools_like_sentence_transformers(tmp_path):
    _tiny_bert(tmp_path)
    bert = Bert(tmp_path)
    v = bert.encode(["i was charged twice", "refund", "my order"])
    assert v.shape == (3, 8) and np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    # padding does not change a sentence's vector: alone or beside a longer one, the same
    alone = bert.encode(["refund"])[0]
    assert np.allclose(alone, v[1], atol=1e-5)
    assert not np.allclose(v[0], v[1])


def test_static_embeddings_round_trip_and_mean(tmp_path):
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(len(VOCAB), 4)).astype(np.float32)
    vectors[:5] = 0.0  # special tokens
    save(tmp_path / "embed.npz", VOCAB, vectors, {"dim": 4})
    emb = StaticEmbeddings.load(tmp_path / "embed.npz")
    assert emb.dim == 4 and emb.meta == {"dim": 4}
    v = emb.encode("refund twice")
    want = vectors[VOCAB.index("refund")].astype(np.float16) + vectors[VOCAB.index("twice")].astype(
        np.float16
    )
    assert np.allclose(v, want / np.linalg.norm(want), atol=1e-3)
    assert not emb.encode("").any() and not emb.encode("😡").any()  # nothing known: zero vector
    assert emb.encode_many(["refund", "order"]).shape == (2, 4)


def _artifact_with_embeddings(tmp_path):
    """A small stakes artifact whose sentence-vector term decides: no sparse weights at all."""
    from voxroute.routing.classifier import CLASSES, HIGH_CLASSES
    from voxroute.routing.train import save as save_model

    vectors = np.zeros((len(VOCAB), 2), dtype=np.float32)
    vectors[VOCAB.index("refund")] = [1.0, 0.0]
    vectors[VOCAB.index("charged")] = [1.0, 0.2]
    vectors[VOCAB.index("order")] = [0.0, 1.0]
    save(tmp_path / "embed.npz", VOCAB, vectors, {"dim": 2})
    dense = np.zeros((2, len(CLASSES)), dtype=np.float32)
    dense[0, CLASSES.index("billing_dispute")] = 4.0
    dense[1, CLASSES.index("order_tracking")] = 4.0
    meta = {
        "version": "t", "classes": list(CLASSES), "high_classes": list(HIGH_CLASSES), "high_threshold": 0.5,
        "embeddings": {"file": "embed.npz", "scale": 2.0},
    }  # fmt: skip
    vocab = ["w unused"]
    weights = np.zeros((1, len(CLASSES)))
    save_model(tmp_path / "stakes.npz", vocab, weights, np.zeros(len(CLASSES)), meta, CLASSES,
               np.arange(len(CLASSES)), dense)  # fmt: skip
    return tmp_path / "stakes.npz"


def test_a_model_with_embeddings_adds_the_sentence_vector_term(tmp_path):
    from voxroute.routing.classifier import StakesModel

    model = StakesModel.load(_artifact_with_embeddings(tmp_path))
    assert model.embeddings is not None and model.embeddings.dim == 2
    assert model.scores("I want my refund").best()[0] == "billing_dispute"
    assert model.scores("my order").best()[0] == "order_tracking"
    z = model.logits("refund")  # unit vector [1, 0] x scale 2 x weight 4 on billing_dispute
    assert z[model.classes.index("billing_dispute")] == pytest.approx(8.0, abs=1e-2)
    assert np.allclose(model.scores("").probs, 0.1)  # no words, no vector: uniform


def test_the_decision_reuses_a_partial_scored_with_embeddings(tmp_path):
    from voxroute.agent.config import load_config, parse_config
    from voxroute.runtime import build_router

    data = load_config().model_dump(mode="python", by_alias=True)
    data["routing"]["classifier"] = str(_artifact_with_embeddings(tmp_path))
    router = build_router(parse_config(data))
    conv = router.conversation("default")
    calls = []
    assert router.model is not None and router.model.embeddings is not None
    emb = router.model.embeddings
    encode = emb.encode
    emb.encode = lambda text: calls.append(text) or encode(text)
    conv.speculate("where is my order")
    r = conv.decide("where is my order", "en-IN")
    assert "speculative, confirmed" in r.reason and r.routing_class == "order_tracking"
    assert calls == ["where is my order"]  # encoded once, while the caller spoke
