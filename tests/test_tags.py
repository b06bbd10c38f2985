"""Attribute tags: the vocabulary, the lexicon, zero-shot and LLM taggers (stub server)."""

from __future__ import annotations

import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from starsrec.data.dataset import DataError
from starsrec.data.interactions import Catalogue
from starsrec.data.loaders import prepare
from starsrec.features.encoders import HashingEncoder
from starsrec.features.llm_tagger import LLMTagger, TaggingError
from starsrec.features.tags import (
    LexiconTagger,
    TagExtractor,
    ZeroShotTagger,
    default_tagger,
    detect_domains,
    load_vocabulary,
    tag_catalogue,
    tag_names,
    tagging_text,
    tagging_texts,
)

FIXTURES = Path(__file__).parent / "fixtures"


def tags_of(tagger, text: str) -> set[str]:
    return set(tag_names(tagger.extract([text]), tagger.vocabulary)[0])


def test_packaged_vocabulary():
    tags = load_vocabulary()
    assert 40 <= len(tags) <= 60
    assert len({t.name for t in tags}) == len(tags)
    assert all(t.description and t.patterns for t in tags)
    assert {"organic", "vegan", "gluten-free", "christmas", "kids-baby", "horror"} <= {
        t.name for t in tags
    }
    film = load_vocabulary(domains=["film"])
    assert {t.domain for t in film} == {"film", "all"} and len(film) < len(tags)
    with pytest.raises(ValueError, match="unknown tag domains"):
        load_vocabulary(domains=["shoes"])


@pytest.mark.parametrize(
    ("text", "present", "absent"),
    [
        (
            "Organic Gluten Free Unsweetened Oat Milk",
            {"organic", "gluten-free", "sugar-free"},
            set(),
        ),
        ("WHITE HANGING HEART T-LIGHT HOLDER", {"heart", "lighting", "candles"}, {"coffee-tea"}),
        ("PAPER CHAIN KIT 50'S CHRISTMAS", {"christmas", "vintage-retro", "party"}, set()),
        ("Hearts of Palm", set(), {"heart"}),  # an exclude pattern vetoes the tag
        ("Biodegradable Kitchen Bags", {"household-cleaning"}, {"organic", "bags"}),  # no "bio"
        ("Adult Chicken Dry Dog Food", {"pet"}, {"animal-themed"}),
    ],
)
def test_lexicon_tagger(text, present, absent):
    tagger = LexiconTagger()
    assert isinstance(tagger, TagExtractor)
    tags = tags_of(tagger, text)
    assert present <= tags and not absent & tags


def test_lexicon_tagger_matrix_and_custom_vocabulary(tmp_path):
    path = tmp_path / "vocab.json"
    vocabulary = {
        "tags": [
            {"name": "oat", "description": "oats", "patterns": ["oats?"], "exclude": ["goat"]},
            {"name": "tree", "description": "trees", "patterns": ["trees?"]},
        ]
    }
    path.write_text(json.dumps(vocabulary))
    tagger = LexiconTagger(path)
    assert tagger.vocabulary == ("oat", "tree")
    m = tagger.extract(["OAT milk", "goat and oats", "oat tree", "boat", "oat tree"])
    assert m.dtype == np.float32
    np.testing.assert_array_equal(m, [[1, 0], [0, 0], [1, 1], [0, 0], [1, 1]])
    assert tag_names(m, tagger.vocabulary)[2] == ("oat", "tree")

    vocabulary["tags"].append({"name": "bad", "description": "x", "patterns": ["(unclosed"]})
    path.write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match="bad pattern"):
        LexiconTagger(path)
    vocabulary["tags"][-1] = {"name": "oat", "description": "again", "patterns": ["x"]}
    path.write_text(json.dumps(vocabulary))
    with pytest.raises(ValueError, match="duplicated tag names"):
        LexiconTagger(path)


def test_the_tagger_reads_catalogue_places():
    assert tagging_text("Potstickers", ("frozen meals", None)) == "Potstickers | frozen meals"
    assert "frozen" in tags_of(LexiconTagger(), tagging_text("Potstickers", ("frozen meals",)))
    items = pd.DataFrame(
        {"item_id": ["a", "b"], "text": ["Potstickers", "Tea"], "subclass": ["frozen meals", None]}
    )
    assert tagging_texts(Catalogue.from_items(items)) == ["Potstickers | frozen meals", "Tea"]


@pytest.mark.parametrize(
    ("texts", "domains"),
    [
        (["WHITE HANGING HEART T-LIGHT HOLDER", "PAPER CHAIN KIT", "RETRO COFFEE MUG"], ("gifts",)),
        (["Organic Oat Milk", "Frozen Peas", "Gluten Free Bread", "Vintage Cheddar"], ("grocery",)),
        (
            ["Organic Oat Milk", "Frozen Peas", "CHRISTMAS GARLAND", "HEART T-LIGHT HOLDER"],
            ("gifts", "grocery"),
        ),
        (["Item 1", "Item 2"], ("film", "gifts", "grocery")),  # no evidence: keep every domain
    ],
)
def test_detect_domains(texts, domains):
    assert detect_domains(texts) == domains
    tagger = default_tagger(domains)
    assert {t.domain for t in tagger.tags} <= {*domains, "all"}
    assert default_tagger(domains) is tagger  # built once per domains
    # One pass of the full lexicon gives what detecting and then tagging give.
    detected, multi_hot = tag_catalogue(texts)
    assert detected == domains
    np.testing.assert_array_equal(multi_hot, tagger.extract(texts))


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "precision", "recall"),
    # Floors a little under what benchmarks/tags.py measured for the default tagging
    # (docs/benchmarks.md "Tags that are right"): a change that makes tags worse fails here.
    [("movielens-100k", 0.9, 0.5), ("online-retail", 0.75, 0.7), ("instacart", 0.65, 0.85)],
)
def test_default_tags_against_hand_labels(name, precision, recall):
    labels = json.loads((FIXTURES / "tag_labels.json").read_text())["datasets"][name]
    try:
        catalogue = Catalogue.from_items(prepare(name).items)
    except (DataError, ModuleNotFoundError) as err:
        pytest.skip(f"real dataset not available: {err}")
    read = tagging_texts(catalogue)
    tagger = default_tagger(detect_domains(read))
    rows = catalogue.index_of(list(labels))
    found = tag_names(tagger.extract([read[r] for r in rows]), tagger.vocabulary)
    hits = sum(len(set(f) & set(t)) for f, t in zip(found, labels.values(), strict=True))
    assert hits / sum(map(len, found)) >= precision
    assert hits / sum(map(len, labels.values())) >= recall


def test_zero_shot_tagger(tmp_path):
    path = tmp_path / "vocab.json"
    descriptions = {"milk": "oat milk almond milk", "xmas": "christmas tree lights", "x": "zzz"}
    path.write_text(
        json.dumps({"tags": [{"name": k, "description": v} for k, v in descriptions.items()]})
    )
    encoder = HashingEncoder(dim=256)
    tagger = ZeroShotTagger(encoder, threshold=0.3, max_tags=1, vocabulary_path=path)
    assert isinstance(tagger, TagExtractor)
    texts = ["organic oat milk", "christmas lights", "qqq"]
    m = tagger.extract(texts)
    np.testing.assert_array_equal(m, [[1, 0, 0], [0, 1, 0], [0, 0, 0]])
    np.testing.assert_array_equal(tagger.extract_embeddings(encoder.encode(texts)), m)
    tagger.max_tags, tagger.threshold = 3, -1.0
    assert tagger.extract(texts).sum(axis=1).tolist() == [3, 3, 3]


# --- LLM tagger against a local OpenAI-compatible stub ----------------------------------------


class StubState:
    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.headers: list[dict] = []
        self.malformed_sent = False


def stub_answer(state: StubState, texts: list[str]) -> tuple[int, str]:
    """(HTTP status, message content) the stub gives for a batch of item texts."""
    if any("HTTP-500" in t for t in texts):
        return 500, "server exploded"
    if any("ALWAYS-MALFORMED" in t for t in texts):
        return 200, "Sorry, I cannot answer that."
    if any("MALFORMED-ONCE" in t for t in texts) and not state.malformed_sent:
        state.malformed_sent = True
        return 200, '{"items": [{"id": 0, "tags": ["organic"'
    entries = []
    for i, text in enumerate(texts):
        if "MISSING-ID" in text:
            continue
        tags = []
        if "organic" in text.lower():
            tags.append("organic")
        if "christmas" in text.lower():
            tags.append("Christmas")  # case differs from the vocabulary
        if "oat milk" in text.lower():
            tags += ["dairy-free", "not-a-tag"]
        entries.append({"id": i, "tags": tags})
    return 200, "```json\n" + json.dumps({"items": entries}) + "\n```"


@pytest.fixture
def stub():
    state = StubState()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            state.requests.append(body)
            state.headers.append(dict(self.headers))
            assert self.path == "/v1/chat/completions"
            prompt = body["messages"][-1]["content"]
            items = json.loads(prompt[prompt.index("ITEMS:\n") + len("ITEMS:\n") :])
            status, content = stub_answer(state, [item["text"] for item in items])
            payload = {"choices": [{"message": {"role": "assistant", "content": content}}]}
            raw = json.dumps(payload).encode() if status == 200 else content.encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def log_message(self, *args):  # keep test output quiet
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1", state
    server.shutdown()
    server.server_close()
    thread.join()


def make_llm(base_url: str, **options) -> LLMTagger:
    options = {"model": "stub-model", "api_key": "test-key", "progress": False} | options
    return LLMTagger(base_url, **options)


def test_llm_tagger_validates_and_caches(stub, tmp_path, caplog):
    base_url, state = stub
    texts = ["Organic Oat Milk", "CHRISTMAS TREE", "plain bread", "Organic Oat Milk"]
    tagger = make_llm(base_url, cache_dir=tmp_path, batch_size=2)
    assert isinstance(tagger, TagExtractor)
    with caplog.at_level(logging.WARNING, logger="starsrec.features.llm_tagger"):
        m = tagger.extract(texts)
    assert [set(t) for t in tag_names(m, tagger.vocabulary)] == [
        {"organic", "dairy-free"},
        {"christmas"},
        set(),
        {"organic", "dairy-free"},
    ]
    assert len(state.requests) == 2  # 3 distinct texts in batches of 2
    assert state.requests[0]["model"] == "stub-model"
    assert state.headers[0]["Authorization"] == "Bearer test-key"
    assert "not-a-tag" in caplog.text and "dropped 1 tags" in caplog.text
    assert "test-key" not in repr(tagger)

    np.testing.assert_array_equal(tagger.extract(texts[::-1]), m[::-1])
    fresh = make_llm(base_url, cache_dir=tmp_path)  # answers come from the disk cache
    np.testing.assert_array_equal(fresh.extract(texts), m)
    assert len(state.requests) == 2 and fresh.requests_made == 0
    other_model = make_llm(base_url, model="other-model", cache_dir=tmp_path)
    other_model.extract(texts[:1])
    assert len(state.requests) == 3


def test_llm_tagger_retries_a_malformed_answer_once(stub):
    base_url, state = stub
    tagger = make_llm(base_url)
    m = tagger.extract(["MALFORMED-ONCE organic apples"])
    assert tag_names(m, tagger.vocabulary) == [("organic",)]
    assert len(state.requests) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ALWAYS-MALFORMED", "malformed JSON twice"),
        ("MISSING-ID", re.escape("no entry for item ids [1]")),
        ("HTTP-500", "answered HTTP 500: server exploded"),
    ],
)
def test_llm_tagger_errors(stub, tmp_path, text, message):
    base_url, _ = stub
    tagger = make_llm(base_url, cache_dir=tmp_path)
    texts = ["organic", text] if text == "MISSING-ID" else [text]
    with pytest.raises(TaggingError, match=message):
        tagger.extract(texts)
    assert not list(tmp_path.rglob("*.jsonl"))  # nothing cached from a failed batch


def test_llm_tagger_unreachable_endpoint():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed once the block ends: nothing listens there
    with pytest.raises(TaggingError, match="cannot reach"):
        make_llm(f"http://127.0.0.1:{port}/v1", timeout=2).extract(["x"])
