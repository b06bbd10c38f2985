"""The Python API: the README's example runs as written (on a tiny model), and `load`
answers unindexed STARS and baseline artifacts under the HTTP API's filters."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import starsrec
from starsrec.baselines import PopularityRecommender
from starsrec.data.dataset import save_prepared
from starsrec.data.integrity import ArtifactError
from starsrec.data.interactions import Catalogue, EventLog
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import TrainingData
from starsrec.serving.api import RESULT_COLUMNS, SIMILAR_COLUMNS, stars_config
from starsrec.serving.catalogue import RequestError
from tiny import TINY

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tests/test_python_api.py runs this example -->"
AT = 1_750_000_000  # after the toy history (2024), before the clock


def readme_example() -> str:
    """The Python block right after the marker in README.md."""
    text = README.read_text(encoding="utf-8")
    assert MARKER in text, "the README lost its tested example"
    match = re.match(r"\s*```python\n(.*?)```", text.split(MARKER, 1)[1], re.S)
    assert match, "the marker must sit right above a ```python block"
    return match.group(1)


def test_the_readme_example_runs(tmp_path, monkeypatch, capsys) -> None:
    # The toy world as the README's dataset, its users renamed like MovieLens's ("1", "2").
    world = make_toy_world(n_users=40)
    users = {u: str(n + 1) for n, u in enumerate(sorted(world.events["user_id"].unique()))}
    events = world.events.assign(user_id=world.events["user_id"].map(users))
    save_prepared(dataclasses.replace(world, events=events), tmp_path / "data/movielens-100k")
    monkeypatch.chdir(tmp_path)
    train = starsrec.train

    def tiny_train(*args, **kwargs):  # the README's call, on the tiny configuration
        return train(*args, config=TINY, **kwargs)

    monkeypatch.setattr(starsrec, "train", tiny_train)
    namespace: dict = {}
    exec(compile(readme_example(), "README.md", "exec"), namespace)

    assert (tmp_path / "artifacts/ml/serving/serving.json").exists()  # trained and indexed
    model, recs, similar = namespace["model"], namespace["recs"], namespace["similar"]
    assert model.served and tuple(recs.columns) == RESULT_COLUMNS
    assert recs["user_id"].tolist() == ["1"] * 5 + ["2"] * 5
    assert recs["rank"].tolist() == [1, 2, 3, 4, 5] * 2
    assert all(group["score"].is_monotonic_decreasing for _, group in recs.groupby("user_id"))
    assert tuple(similar.columns) == SIMILAR_COLUMNS and len(similar) == 3
    assert recs["item_id"].iloc[0] not in set(similar["item_id"])  # never the item itself
    assert "query_item_id" in capsys.readouterr().out
    model.close()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """The served fixture's toy world (40 users) as a prepared dataset directory."""
    folder = tmp_path_factory.mktemp("toy-data")
    world = make_toy_world(n_users=40)
    save_prepared(world, folder)
    return world, folder


def test_an_unindexed_stars_answers_from_the_dataset(served_artifact, toy, tmp_path) -> None:
    _, log, served = served_artifact
    _, data_dir = toy
    artifact = tmp_path / "unindexed"
    shutil.copytree(served, artifact, ignore=shutil.ignore_patterns("serving"))
    with pytest.raises(ArtifactError, match="pass data_dir="):
        starsrec.load(artifact)  # no training record to find its users' histories
    with starsrec.load(artifact, data_dir) as model:
        assert not model.served and model.name == "stars"
        assert model.users() == [str(u) for u in log.user_ids]
        user = str(log.user_ids[0])
        recs = model.recommend([user, "nobody"], k=4, timestamp=AT)
        assert tuple(recs.columns) == RESULT_COLUMNS
        assert (recs.groupby("user_id").size() == 4).all()
        assert set(recs.loc[recs["user_id"] == "nobody", "memory"]) == {"context"}
        # Before a user's first event, they have no history yet: the context alone.
        first = int(log.timestamp[log.offsets[0]])
        early = model.recommend(user, k=4, timestamp=first - 1)
        assert set(early["memory"]) == {"context"}


def test_a_baseline_answers_under_the_http_filters(toy, tmp_path) -> None:
    world, data_dir = toy
    catalogue = Catalogue.from_items(world.items)
    log = EventLog.from_dataset(world, catalogue)
    artifact = PopularityRecommender().fit(TrainingData(log, catalogue)).save(tmp_path / "pop")
    with starsrec.load(artifact, data_dir) as model:
        assert model.name == "popularity" and not model.served
        user = str(log.user_ids[3])
        bought = set(catalogue.item_ids[log.item[log.offsets[3] : log.offsets[4]]].tolist())
        every = catalogue.size  # whole rankings: what a filter removes is plain to see
        plain = model.recommend(user, every, timestamp=AT, filters={"exclude_purchased": False})
        kept = model.recommend(user, every, timestamp=AT, filters={"exclude_purchased": True})
        assert len(plain) == every and set(kept["item_id"]) == set(plain["item_id"]) - bought
        assert set(plain.loc[plain["item_id"].isin(bought), "memory"]) == {"repeat"}
        scoped = model.recommend(user, k=50, timestamp=AT, filters='{"classes": ["class-1"]}')
        classes = np.array(catalogue.class_names)[catalogue.item_class]
        in_class = set(catalogue.item_ids[classes == "class-1"].tolist())
        assert len(scoped) > 0 and set(scoped["item_id"]) <= in_class
        similar = model.similar_items(["s0-n1", "s2-n3"], k=3)
        assert similar["query_item_id"].tolist() == ["s0-n1"] * 3 + ["s2-n3"] * 3
        assert not (similar["query_item_id"] == similar["item_id"]).any()
        with pytest.raises(RequestError, match=r"filters\.classes: unknown \['Bags'\]"):
            model.recommend(user, filters={"classes": ["Bags"]})
        with pytest.raises(RequestError, match="item_id: unknown item 'nope'"):
            model.similar_items("nope")
        with pytest.raises(RequestError, match="k: must be an integer >= 1"):
            model.recommend(user, k=0)


def test_loading_something_else_says_what_to_give(tmp_path) -> None:
    with pytest.raises(ArtifactError, match="not a directory"):
        starsrec.load(tmp_path / "missing")
    with pytest.raises(ArtifactError, match=r"config\.json is missing"):
        starsrec.load(tmp_path)


def test_train_overrides_change_only_the_fields_they_name() -> None:
    config = stars_config(TINY, {"model": {"dim": 8}, "text_encoder": "hashing"})
    assert config.model.dim == 8 and config.model.layers == TINY.model.layers
    assert config.train == TINY.train
    assert stars_config(None, {}).model.dim == starsrec.StarsConfig().model.dim
    with pytest.raises(ValueError, match="bad STARS config"):
        stars_config(None, {"no_such_field": 1})
