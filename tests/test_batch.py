"""`starsrec recommend`: batch recommendations equal the HTTP service's answers, honour the
filters, come out the same in chunks as in one pass, and refuse bad input clearly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from starsrec.cli import main
from starsrec.serving.api import RESULT_COLUMNS, load
from starsrec.serving.batch import SCHEMA, BatchConfig, select_users, write_recommendations
from starsrec.serving.service import RecommendationService
from starsrec.web.app import create_app

# Later than the toy history (2024) yet in the past: the service refuses future times.
AT = 1_750_000_000


def users_file(path: Path, users: list[str]) -> Path:
    path.write_text("\n".join(users) + "\n")
    return path


def batch(artifact: Path, users: str | Path, out: Path, *options: str) -> int:
    argv = ["recommend", str(artifact), "--users", str(users), "--out", str(out), *options]
    return main(argv)


def http_answers(artifact: Path, users: list[str], k: int, filters: dict) -> dict[str, list]:
    """What POST /v1/recommend answers for each user, from a service of its own."""
    service = RecommendationService.load(artifact)
    try:
        with TestClient(create_app(service=service)) as client:
            answers = {}
            for user in users:
                body = {"user_id": user, "k": k, "timestamp": AT, "filters": filters}
                response = client.post("/v1/recommend", json=body)
                assert response.status_code == 200, response.text
                answers[user] = response.json()["items"]
            return answers
    finally:
        service.store.close()


FILTERS = [
    {},
    {"exclude_purchased": False},
    {"classes": ["class-1"], "exclude": ["s1-n4", "s3-n2"]},
    {"subclasses": ["line-0", "line-2"], "exclude_purchased": True},
]


@pytest.mark.parametrize("filters", FILTERS, ids=lambda f: ",".join(f) or "defaults")
def test_batch_rows_equal_the_http_answers(served_artifact, tmp_path, filters) -> None:
    _, log, artifact = served_artifact
    users = [str(u) for u in log.user_ids[::5]] + ["nobody"]  # 8 known, 1 skipped
    out = tmp_path / "recs.parquet"
    options = ["--k", "6", "--timestamp", str(AT), "--filters", json.dumps(filters)]
    assert batch(artifact, users_file(tmp_path / "users.txt", users), out, *options) == 0
    assert pq.read_schema(out).equals(SCHEMA)
    rows = pd.read_parquet(out)
    assert tuple(rows.columns) == RESULT_COLUMNS
    expected = http_answers(artifact, users[:-1], 6, filters)
    assert rows["user_id"].unique().tolist() == users[:-1]  # file order, unknown skipped
    for user, answer in expected.items():
        mine = rows[rows["user_id"] == user]
        assert mine["rank"].tolist() == list(range(1, len(answer) + 1))
        assert len(answer) == 6
        for (_, row), item in zip(mine.iterrows(), answer, strict=True):
            assert row["item_id"] == item["item_id"]
            assert row["score"] == item["score"]  # exactly: the same service computation
            assert row["text"] == item["text"] and row["memory"] == item["memory"]
            assert list(row["tags"]) == item["tags"]
            assert list(row["shared_tags"]) == item["shared_tags"]


def test_batch_honours_the_filters(served_artifact, tmp_path) -> None:
    recommender, log, artifact = served_artifact
    catalogue = recommender.catalogue
    names = np.array(catalogue.class_names)[catalogue.item_class]
    item_class = dict(zip(catalogue.item_ids.tolist(), names.tolist(), strict=True))
    out = tmp_path / "recs.parquet"
    filters = {"classes": ["class-0"], "exclude": ["s0-n3"], "exclude_purchased": True}
    options = ["--k", "5", "--timestamp", str(AT), "--filters", json.dumps(filters)]
    assert batch(artifact, "all", out, *options) == 0
    rows = pd.read_parquet(out)
    assert rows["user_id"].nunique() == log.n_users  # "all": every indexed user
    assert {item_class[i] for i in rows["item_id"]} == {"class-0"}
    assert "s0-n3" not in set(rows["item_id"])
    # exclude_purchased: nobody is recommended an item they bought before AT.
    users = log.user_ids[log.user]
    bought = set(zip(users.tolist(), catalogue.item_ids[log.item].tolist(), strict=True))
    assert not any(pair in bought for pair in zip(rows["user_id"], rows["item_id"], strict=True))
    assert (rows.groupby("user_id").size() == 5).all()


def test_chunks_equal_one_pass(served_artifact, tmp_path) -> None:
    _, log, artifact = served_artifact
    users = [str(u) for u in log.user_ids]
    with load(artifact) as model:
        frames = []
        for chunk_size in (1, 7, len(users)):
            out = tmp_path / f"recs-{chunk_size}.parquet"
            config = BatchConfig(chunk_size=chunk_size, progress=False)
            summary = write_recommendations(model, users, out, 4, None, AT, config)
            assert summary.users == len(users) and summary.rows == 4 * len(users)
            frames.append(pd.read_parquet(out))
        whole = model.recommend(users, 4, timestamp=AT)
    for frame in frames:
        pd.testing.assert_frame_equal(frame, frames[-1])
    # The file is the API's frame, written chunk by chunk.
    pd.testing.assert_frame_equal(frames[-1], whole, check_dtype=False)


def test_unknown_users_are_counted_and_skipped_or_refused(
    served_artifact, tmp_path, capsys, caplog
) -> None:
    _, log, artifact = served_artifact
    known = [str(u) for u in log.user_ids[:3]]
    path = users_file(tmp_path / "users.txt", [*known, "ghost-1", known[0], "ghost-2"])
    out = tmp_path / "recs.parquet"
    with caplog.at_level(logging.WARNING):
        assert batch(artifact, path, out, "--timestamp", str(AT)) == 0
    assert "2 of 5 users are unknown" in caplog.text and "'ghost-1'" in caplog.text
    assert "3 users (2 unknown skipped)" in capsys.readouterr().out
    assert pd.read_parquet(out)["user_id"].unique().tolist() == known

    out.unlink()
    assert batch(artifact, path, out, "--unknown-users", "fail") == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "2 of 5 users are unknown" in error
    assert not out.exists()
    only_ghosts = users_file(tmp_path / "ghosts.txt", ["ghost-1"])
    assert batch(artifact, only_ghosts, out) == 2
    assert "1 of 1 users are unknown" in capsys.readouterr().err


def test_users_from_csv_and_parquet(served_artifact, tmp_path) -> None:
    _, log, artifact = served_artifact
    users = [str(u) for u in log.user_ids[:4]]
    table = pd.DataFrame({"segment": ["a"] * 4, "user_id": users})
    table.to_csv(tmp_path / "users.csv", index=False)
    table.to_parquet(tmp_path / "users.parquet", index=False)
    pd.DataFrame({"customer": users}).to_csv(tmp_path / "bad.csv", index=False)
    pd.DataFrame({"a": users, "b": users}).to_csv(tmp_path / "two.csv", index=False)
    with load(artifact) as model:
        for name in ("users.csv", "users.parquet", "bad.csv"):  # a lone column is the ids
            assert select_users(model, tmp_path / name) == (users, 0)
        with pytest.raises(ValueError, match="no user_id column"):
            select_users(model, tmp_path / "two.csv")
        with pytest.raises(FileNotFoundError, match="no such users file"):
            select_users(model, tmp_path / "missing.txt")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--filters", "{exclude_purchased: true}"], "filters: not valid JSON"),
        (["--filters", '["Bags"]'], "filters: must be a JSON object, got list"),
        (["--filters", '{"clases": ["Bags"]}'], "filters.clases: Extra inputs are not permitted"),
        (["--filters", '{"in_stock_only": "yes"}'], "filters.in_stock_only: Input should be"),
        (["--filters", '{"classes": ["Bags"]}'], "filters.classes: unknown ['Bags']"),
        (["--filters", '{"exclude": ["no-such-item"]}'], "filters.exclude: unknown item ids"),
        (["--timestamp", "next tuesday"], "timestamp: 'next tuesday' is neither unix seconds"),
        (["--k", "0"], "k: must be an integer >= 1"),
    ],
)
def test_bad_input_is_one_line_saying_how_to_fix_it(
    served_artifact, tmp_path, capsys, options, message
) -> None:
    _, _, artifact = served_artifact
    out = tmp_path / "recs.parquet"
    assert batch(artifact, "all", out, "--timestamp", str(AT), *options) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and message in error, error
    assert "Traceback" not in error and not out.exists()
    if "filters" in message and "unknown" not in message:
        assert "exclude_purchased" in error  # the fields, or an example, to write instead
