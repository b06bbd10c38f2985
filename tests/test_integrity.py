"""Artifacts are safe: atomic writes, checksums verified at load, damaged or incompatible
artifacts refused with a clear error, never a pickle, and hot reload of the serving app."""

from __future__ import annotations

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from starsrec.baselines import BASELINES
from starsrec.data.files import MEMORY_FILE, META_FILE, PRODUCTS_FILE, SERVING_DIR, SERVING_FILE
from starsrec.data.integrity import ArtifactError, sha256_file, write_atomic, write_json_atomic
from starsrec.data.interactions import Catalogue, EventLog
from starsrec.data.toyworld import make_toy_world
from starsrec.recommender import TrainingData
from starsrec.serving.catalogue import Product
from starsrec.serving.product_log import ProductLog
from starsrec.serving.service import RecommendationService
from starsrec.stars import recommender as stars
from starsrec.stars.recommender import StarsRecommender
from starsrec.web.app import create_app
from tiny import TINY_LAMBDAMART

KEY = "integrity-test-key"


def copy_of(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "copy"))


# --- atomic writes ---------------------------------------------------------------------------
def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    write_json_atomic(target, {"version": 1})

    def crash(temporary: Path) -> None:
        temporary.write_text('{"version": 2, "trunc')
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, crash)
    assert json.loads(target.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


# --- checksums -------------------------------------------------------------------------------
def test_save_records_every_file_checksum_and_keeps_the_callers_meta(served_artifact) -> None:
    _, _, artifact = served_artifact
    meta = json.loads((artifact / META_FILE).read_text())
    assert meta["note"] == "test" and meta["model"] == "stars" and meta["format"] == 1
    assert set(meta["checksums"]) == {
        "config.json",
        "state.safetensors",
        "items.parquet",
        "calendar.json",
    }
    for name, digest in meta["checksums"].items():
        assert sha256_file(artifact / name) == digest


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda a: flip_a_byte(a / "state.safetensors"), "does not match the checksum"),
        (lambda a: truncate(a / "items.parquet"), "does not match the checksum"),
        (lambda a: (a / "calendar.json").unlink(), "calendar.json is missing"),
        (lambda a: (a / META_FILE).write_text("{not json"), "meta.json is unreadable"),
        (
            lambda a: write_json_atomic(
                a / META_FILE, {**json.loads((a / META_FILE).read_text()), "format": 99}
            ),
            "artifact format 99, this starsrec reads 1",
        ),
    ],
    ids=["corrupt-state", "truncated-items", "missing-file", "garbled-meta", "newer-format"],
)
def test_damaged_or_incompatible_artifacts_are_refused(
    served_artifact, tmp_path, damage, message
) -> None:
    _, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    damage(copy)
    with pytest.raises(ArtifactError, match=message) as error:
        StarsRecommender.load(copy)
    assert "retrain it" in str(error.value)  # the message says how to fix it


def test_unparseable_files_without_checksums_are_refused_clearly(served_artifact, tmp_path) -> None:
    """An artifact from before checksums (no meta.json) still gets a clear error."""
    _, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    (copy / META_FILE).unlink()
    truncate(copy / "state.safetensors")
    with pytest.raises(ArtifactError, match="could not be loaded"):
        StarsRecommender.load(copy)


def test_baselines_save_their_own_files_with_checksums(tmp_path: Path) -> None:
    dataset = make_toy_world(n_users=30)
    catalogue = Catalogue.from_items(dataset.items)
    log = EventLog.from_dataset(dataset, catalogue)
    model = BASELINES["lambdamart"](TINY_LAMBDAMART).fit(TrainingData(log, catalogue, "GB"))
    path = model.save(tmp_path / "lambdamart")
    recorded = json.loads((path / META_FILE).read_text())["checksums"]
    assert set(recorded) == {
        "config.json",
        "state.safetensors",
        "items.parquet",
        "booster.txt",
        "context.json",
    }
    flip_a_byte(path / "state.safetensors")
    with pytest.raises(ArtifactError, match="does not match the checksum"):
        type(model).load(path)


def test_loading_never_unpickles(served_artifact, monkeypatch) -> None:
    _, _, artifact = served_artifact

    def refuse(*args, **kwargs):
        raise AssertionError("a pickle was loaded")

    for module, name in [(pickle, "load"), (pickle, "loads"), (torch, "load")]:
        monkeypatch.setattr(module, name, refuse)
    service = RecommendationService.load(artifact)
    service.store.close()


def test_serving_files_are_verified_and_tied_to_their_model(served_artifact, tmp_path) -> None:
    recommender, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    flip_a_byte(copy / SERVING_DIR / MEMORY_FILE)
    with pytest.raises(ArtifactError, match=r"memories\.safetensors does not match"):
        RecommendationService.load(copy)

    retrained = copy_of(artifact, tmp_path / "again")
    with torch.no_grad():
        recommender.model.repeat_weights.add_(1.0)  # "another training" of the same model
    try:
        recommender.save(retrained)
    finally:
        with torch.no_grad():
            recommender.model.repeat_weights.sub_(1.0)
    with pytest.raises(ArtifactError, match="built for another training"):
        RecommendationService.load(retrained)
    serving = json.loads((artifact / SERVING_DIR / SERVING_FILE).read_text())
    assert "events.sqlite" not in serving["checksums"]  # the live store changes by design


# --- hot reload ------------------------------------------------------------------------------
def test_reload_swaps_in_the_new_artifact_and_refuses_a_broken_one(
    served_artifact, tmp_path
) -> None:
    _, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    body = {"user_id": "u0000", "k": 3}
    app = create_app(RecommendationService.load(copy), reload_from=copy, api_key=KEY)
    with TestClient(app) as client:
        assert client.post("/v1/recommend", json=body).status_code == 200
        assert client.post("/v1/admin/reload").status_code == 401  # admin needs the key
        auth = {"Authorization": f"Bearer {KEY}"}
        reloaded = client.post("/v1/admin/reload", headers=auth)
        assert reloaded.status_code == 200 and reloaded.json()["status"] == "reloaded"

        flip_a_byte(copy / SERVING_DIR / MEMORY_FILE)
        refused = client.post("/v1/admin/reload", headers=auth)
        assert refused.status_code == 409
        assert "still serving" in refused.json()["detail"]
        assert client.post("/v1/recommend", json=body).status_code == 200


def test_reload_needs_an_artifact_directory(served_artifact) -> None:
    _, _, artifact = served_artifact
    service = RecommendationService.load(artifact)
    with TestClient(create_app(service=service, insecure_open_writes=True)) as client:
        answer = client.post("/v1/admin/reload")
        assert answer.status_code == 409 and answer.json()["field"] == "reload"
    service.store.close()


def test_the_known_users_are_the_same_after_reload(served_artifact, tmp_path) -> None:
    _, _, artifact = served_artifact
    body = {"user_id": "u0001", "k": 5}
    copy = copy_of(artifact, tmp_path)
    app = create_app(RecommendationService.load(copy), reload_from=copy, insecure_open_writes=True)
    with TestClient(app) as client:
        before = client.post("/v1/recommend", json=body).json()["items"]
        client.post("/v1/admin/reload").raise_for_status()
        after = client.post("/v1/recommend", json=body).json()["items"]
    assert [i["item_id"] for i in before] == [i["item_id"] for i in after]
    assert np.allclose([i["score"] for i in before], [i["score"] for i in after])


# --- products put while serving ---------------------------------------------------------------
def test_products_put_while_serving_survive_reload_restart_and_reindex_log(
    served_artifact, tmp_path
) -> None:
    _, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    new = {"item_id": "added-live", "text": "product 3 of line 2, new edition"}
    app = create_app(RecommendationService.load(copy), reload_from=copy, insecure_open_writes=True)
    with TestClient(app) as client:
        client.put("/v1/items", json=new).raise_for_status()
        client.put("/v1/items", json={**new, "in_stock": False}).raise_for_status()
        client.post("/v1/admin/reload").raise_for_status()
        assert client.get("/v1/items/added-live/similar").status_code == 200
    log = copy / SERVING_DIR / PRODUCTS_FILE
    assert len(log.read_text().splitlines()) == 2  # a reload does not compact (see below)
    log.write_text(log.read_text() + '{"item_id": "cut-sh')  # a crash mid-append
    service = RecommendationService.load(copy)  # a restart
    row = service.items.row_of["added-live"]
    assert not service.items.in_stock[row]  # the latest version won
    assert "cut-sh" not in log.read_text()
    assert len(log.read_text().splitlines()) == 1  # a restart compacts to the latest version
    service.store.close()


def test_a_garbled_product_log_line_is_refused_clearly(served_artifact, tmp_path) -> None:
    _, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    (copy / SERVING_DIR / PRODUCTS_FILE).write_text('{"nope": 1}\n{"item_id": "a", "text": "b"}\n')
    with pytest.raises(ArtifactError, match=r"products\.jsonl:1 is not a product record"):
        RecommendationService.load(copy)


def test_products_put_while_a_reload_loads_reach_the_new_service(served_artifact, tmp_path):
    """The reload's sequence: the new service loads (no compaction) while the old one takes
    a product; after the swap the new one replays what the log gained meanwhile."""
    _, _, artifact = served_artifact
    copy = copy_of(artifact, tmp_path)
    old = RecommendationService.load(copy)
    fresh = RecommendationService.load(copy, compact_products=False)
    old.upsert_items([Product("during-reload", "product 1 of line 2, put during a reload")])
    assert "during-reload" not in fresh.items.row_of
    assert [p.item_id for p in fresh.replay_products()] == ["during-reload"]
    assert "during-reload" in fresh.items.row_of
    restarted = RecommendationService.load(copy)
    assert "during-reload" in restarted.items.row_of
    log = (copy / SERVING_DIR / PRODUCTS_FILE).read_text().splitlines()
    assert len(log) == 1  # replaying did not log the product twice; the restart compacted
    for service in (old, fresh, restarted):
        service.store.close()


def test_a_stars_model_of_another_format_is_refused_with_the_fix(
    served_artifact, tmp_path, monkeypatch
) -> None:
    """Parameters that changed shape or meaning must not load into the new model."""
    recommender, _, _ = served_artifact
    monkeypatch.setattr(stars, "MODEL_FORMAT", stars.MODEL_FORMAT + 1)
    recommender.save(tmp_path / "future")
    monkeypatch.undo()
    with pytest.raises(ArtifactError, match=r"model format .* retrain it with starsrec train"):
        StarsRecommender.load(tmp_path / "future")


def test_processes_sharing_a_product_log_read_each_others_products_not_their_own(tmp_path):
    """Two logs on one file stand for two workers: each reads what the other appended,
    once, and never its own lines; a line a crash cut short is skipped, not glued on."""
    path = tmp_path / "products.jsonl"
    first, second = ProductLog(path), ProductLog(path)
    first.append([Product("a", "text a"), Product("b", "text b")])
    assert first.read_new() == []  # its own lines only
    assert second.has_new()
    assert [p.item_id for p in second.read_new()] == ["a", "b"]
    assert not second.has_new() and second.read_new() == []
    second.append([Product("c", "text c")])
    with open(path, "ab") as handle:
        handle.write(b'{"item_id": "cut')  # a write a crash interrupted
    first.append([Product("d", "text d")])  # ends the cut line first
    assert [p.item_id for p in first.read_new()] == ["c"]
    assert [p.item_id for p in second.read_new()] == ["d"]
    assert [p.item_id for p in ProductLog(path).read_new()] == ["a", "b", "c", "d"]
