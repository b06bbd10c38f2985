"""docs/quickstart.md, run as written on a generated shop export, so the page cannot rot.

Every ```sh block of the page runs in order, in a directory holding `my-shop/` (events.csv
and items.csv from `write_export`, with the columns of the page's ```csv blocks, and the
page's ```json block as dataset.json); every ```python block runs where it stands. The
substitutions the page states are the only ones: `starsrec train` gets tests/tiny.py's
`--set` overrides, `starsrec serve` runs in the background on a free port, and each `curl`
is sent with httpx to that port. The errors the page quotes are checked against the ones
the CLI gives for the same mistakes.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from conftest import TINY_OVERRIDES, free_port
from starsrec.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "quickstart.md"
LINES = [("mug", "kitchen"), ("teapot", "kitchen"), ("plate", "kitchen")]
LINES += [("candle", "home"), ("cushion", "home"), ("lantern", "garden")]
COLOURS = ("red", "blue", "green", "white", "black")


def write_export(folder: Path, columns: dict[str, list[str]], n_users: int = 120) -> None:
    """A shop's export: 60 items in 6 lines, 120 customers shopping in sessions (views and
    carts first, then purchases) over the 13 weeks from Monday 2024-01-01, mostly in one
    favourite line. `columns` gives each file's header, in order."""
    rng = np.random.default_rng(0)
    items = pd.DataFrame(
        [
            {
                "item_id": f"SKU-{i:04d}",
                "text": f"{colour} {thing}, {size} size",
                "class": kind,
                "subclass": thing,
                "price": round(2.5 + 1.5 * i % 17, 2),
                "available": i % 9 != 0,
            }
            for i, (thing, kind, colour, size) in enumerate(
                (thing, kind, colour, size)
                for thing, kind in LINES
                for colour in COLOURS
                for size in ("small", "large")
            )
        ]
    )
    rows: list[dict] = []
    sessions = 0
    for user in range(n_users):
        own = np.flatnonzero(items["subclass"] == LINES[rng.integers(len(LINES))][0])
        for _ in range(int(rng.integers(3, 8))):
            sessions += 1
            start = pd.Timestamp("2024-01-01") + pd.Timedelta(
                minutes=int(rng.integers(13 * 7 * 1440))
            )
            picks = [
                int(rng.choice(own)) if rng.random() < 0.7 else int(rng.integers(len(items)))
                for _ in range(int(rng.integers(1, 6)))
            ]
            for step, item in enumerate(picks):
                bought = step >= len(picks) // 2
                rows.append(
                    {
                        "user_id": f"C{10000 + user}",
                        "item_id": items.item_id[item],
                        "timestamp": f"{start + pd.Timedelta(minutes=2 * step):%Y-%m-%d %H:%M:%S}",
                        "event_type": "purchase" if bought else rng.choice(["view", "add_to_cart"]),
                        "session_id": f"S{sessions:06d}",
                        "quantity": int(rng.integers(1, 4)) if bought else 1,
                        "price": items.price[item],
                    }
                )
    folder.mkdir()
    pd.DataFrame(rows)[columns["events.csv"]].to_csv(folder / "events.csv", index=False)
    items[columns["items.csv"]].to_csv(folder / "items.csv", index=False)


# --- reading the page ------------------------------------------------------------------------


def fenced() -> list[tuple[str, str, str]]:
    """(language, info string after it, text) of every fenced block of the page, in order."""
    found = re.findall(r"^```(\S+)([^\n]*)\n(.*?)^```$", PAGE.read_text(), re.M | re.S)
    return [(language, info.strip(), text) for language, info, text in found]


def commands(text: str) -> Iterator[str]:
    """The shell commands of a block: continuation lines joined, comments and blanks left out."""
    for command in text.replace("\\\n", " ").splitlines():
        command = command.strip()
        if command and not command.startswith("#"):
            yield command


def page_columns() -> dict[str, list[str]]:
    """Each file's header, from the ```csv blocks named after the file (```csv events.csv)."""
    return {info: text.splitlines()[0].split(",") for kind, info, text in fenced() if kind == "csv"}


def write_shop(root: Path) -> Path:
    """my-shop/ under `root`: the generated export and the page's dataset.json."""
    (meta,) = [text for kind, _, text in fenced() if kind == "json"]
    write_export(root / "my-shop", page_columns())
    (root / "my-shop" / "dataset.json").write_text(meta)
    for kind, name, text in fenced():  # the page's sample rows are the export's first rows
        if kind == "csv":
            lines = text.splitlines()
            assert (root / "my-shop" / name).read_text().splitlines()[: len(lines)] == lines
    return root / "my-shop"


# --- running it ------------------------------------------------------------------------------


class Quickstart:
    """Runs the page's commands in `root` (the current directory), checking each step."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
        self.root, self.monkeypatch, self.capsys = root, monkeypatch, capsys
        self.server: subprocess.Popen | None = None
        self.url = ""
        self.responses: list[httpx.Response] = []
        self.ran: list[str] = []  # the starsrec commands run, "data summary", "train"...

    def sh(self, command: str) -> None:
        """One command of a ```sh block."""
        words = shlex.split(command)
        if words[0] == "starsrec":
            self.starsrec(words[1:])
        elif words[0] == "export":
            self.export(command)
        elif words[0] == "curl":
            self.curl(command)
        else:
            raise AssertionError(f"the page runs {command!r}, which this test cannot follow")

    def python(self, code: str) -> str:
        """A ```python block, run where the shell commands ran; returns what it printed."""
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            exec(compile(code, str(PAGE), "exec"), {})
        return printed.getvalue()

    def starsrec(self, argv: list[str]) -> None:
        self.ran.append(" ".join(argv[:2]) if argv[0] == "data" else argv[0])
        if argv[0] == "train":
            argv += [arg for value in TINY_OVERRIDES for arg in ("--set", value)]
        if argv[0] == "serve":
            return self.serve(argv)
        self.capsys.readouterr()
        status = main(argv)
        printed = self.capsys.readouterr()
        assert status == 0, f"starsrec {shlex.join(argv)} failed:\n{printed.err}"
        check_outputs(argv, printed.out)
        return None

    def export(self, command: str) -> None:
        # export NAME=$(python3 -c '...'): the page's way to make a key.
        found = re.fullmatch(r"export (\w+)=\$\((.*)\)", command)
        assert found, f"cannot follow {command!r}"
        program = shlex.split(found[2])
        assert program[0] in ("python", "python3"), command
        value = subprocess.run(
            [sys.executable, *program[1:]], capture_output=True, text=True, check=True
        ).stdout.strip()
        self.monkeypatch.setenv(found[1], value)

    def serve(self, argv: list[str]) -> None:
        """`starsrec serve ... --port 8000` in the background on a free port instead."""
        assert "--port" in argv, "the page's serve command names its port"
        argv[argv.index("--port") + 1] = str(port := free_port())
        self.url = f"http://127.0.0.1:{port}"
        log = open(self.root / "serve.log", "wb")  # noqa: SIM115 - the server's lifetime
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "starsrec.cli", *argv]
        self.server = subprocess.Popen(command, stdout=log, stderr=log, env=env)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.server.poll() is None, (self.root / "serve.log").read_text()
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            time.sleep(0.2)
        raise AssertionError(f"no answer in 120 s:\n{(self.root / 'serve.log').read_text()}")

    def curl(self, command: str) -> None:
        """The request a `curl -s [-X M] [-H H]... [-d BODY] URL` line makes, sent by httpx."""
        words = iter(shlex.split(os.path.expandvars(command))[1:])
        method, headers, body, url = None, {}, None, None
        for word in words:
            if word == "-X":
                method = next(words)
            elif word == "-H":
                name, value = next(words).split(":", 1)
                headers[name.strip()] = value.strip()
            elif word == "-d":
                body = next(words)
            elif word != "-s":
                assert not word.startswith("-"), f"curl option {word} unknown to this test"
                url = word
        assert url and self.url, f"{command!r}: no URL, or no server started before it"
        url = re.sub(r"^(http://)?localhost:8000", self.url, url)
        method = method or ("POST" if body is not None else "GET")
        response = httpx.request(method, url, headers=headers, content=body, timeout=30)
        assert response.status_code == 200, f"{command}\n-> {response.status_code} {response.text}"
        self.responses.append(response)

    def stop(self) -> None:
        if self.server is not None and self.server.poll() is None:
            self.server.terminate()
            self.server.wait(timeout=30)


def check_outputs(argv: list[str], printed: str) -> None:
    """What each documented command must leave behind."""
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    if argv[:2] == ["data", "summary"]:
        assert "week of" in printed and "returning baskets in validation" in printed
    elif argv[:2] == ["data", "prepare"]:
        assert out and (out / "events.parquet").exists() and (out / "dataset.json").exists()
    elif argv[0] == "evaluate":
        assert out, "the page's evaluate commands name their report directory"
        report = (out / "report.md").read_text()
        assert "| my-shop | next-basket |" in report
        # STARS (trained here or the artifact) and the baselines, each with its interval
        assert "Differences to the strongest baseline" in report
        rows = json.loads((out / "comparisons.json").read_text())
        assert "stars" in {row["model"] for row in rows}
        assert all(row["low"] <= row["mean_difference"] <= row["high"] for row in rows)
    elif argv[0] == "train":
        assert out and json.loads((out / "meta.json").read_text())["protocol"] == "next-basket"
    elif argv[0] == "index":
        assert (Path(argv[1]) / "serving" / "serving.json").exists()
    else:
        raise AssertionError(f"no check for starsrec {argv[0]}: add one")


def test_the_quickstart_runs_as_written(tmp_path: Path, monkeypatch, capsys) -> None:
    write_shop(tmp_path)
    monkeypatch.chdir(tmp_path)
    run = Quickstart(tmp_path, monkeypatch, capsys)
    try:
        for kind, _, text in fenced():
            if kind == "sh":
                for command in commands(text):
                    run.sh(command)
            elif kind == "python":
                run.python(text)
        # The documented requests answered, and without the key a write is refused.
        assert len(run.responses) >= 5
        answers = [r.json() for r in run.responses if r.request.url.path == "/v1/recommend"]
        assert answers and all(answer["items"] for answer in answers)
        event = {"user_id": "C10007", "item_id": "SKU-0012", "event_id": "no-key"}
        assert httpx.post(f"{run.url}/v1/events", json=event).status_code == 401
        # The item the page marks out of stock is left out from then on, by every worker
        # once it has followed the product log (`serve` runs one per core; a request may
        # reach either, and the one the PUT did not reach applies it within a follow
        # interval, plus the time to tag the product: on a loaded machine, some seconds).
        request = {"user_id": "C10007", "k": 59}

        def recommended() -> set[str]:
            items = httpx.post(f"{run.url}/v1/recommend", json=request).json()["items"]
            assert items
            return {item["item_id"] for item in items}

        # Ten answers in a row without it (fresh connections, spread over the workers):
        # every worker has followed. One answer without it showed only that one had.
        deadline, streak = time.monotonic() + 30.0, 0
        while streak < 10:
            assert time.monotonic() < deadline, "a worker still recommends SKU-0024 after 30 s"
            streak = 0 if "SKU-0024" in recommended() else streak + 1
    finally:
        run.stop()
    steps = ["data summary", "data prepare", "evaluate", "train", "index", "serve"]
    assert set(run.ran) == set(steps), f"the page's blocks ran {run.ran}"
    assert run.ran.count("evaluate") == 2  # the baselines and STARS, then the artifact


# The mistakes whose errors the page quotes: (file, text replaced, replacement, commands).
PREPARE = ["data", "prepare", "my-shop", "--out", "data/my-shop"]
EVALUATE = ["evaluate", "data/my-shop", "--protocol", "next-basket", "--models", "popularity"]
MISTAKES = {
    "undeclared": ("dataset.json", ',\n    {"name": "view", "weight": 0.2, "target": false}', ""),
    "timestamp": ("events.csv", "2024-02-16 12:21:00", "16/02/2024 12:21"),
    "session": ("events.csv", ",S000001,1,9.5", ",,1,9.5"),
    "typo": ("dataset.json", '"weight": 0.5', '"wieght": 0.5'),
    "country": ("dataset.json", '"country": "GB"', '"country": "England"'),
    "cuts": ("dataset.json", '"test": "2024-03-18"', '"test": "2024-04-15"'),
}


def quoted_error(name: str) -> str:
    """The ```text block after the page's `ERROR name` marker comment."""
    found = re.search(rf"<!-- error: {name} -->\n```text\n(.*?)```", PAGE.read_text(), re.S)
    assert found, f"docs/quickstart.md quotes no error {name!r}"
    return found[1]


@pytest.mark.parametrize("name", MISTAKES)
def test_the_quoted_errors_are_the_real_ones(name: str, tmp_path: Path, monkeypatch, capsys):
    folder = write_shop(tmp_path)
    monkeypatch.chdir(tmp_path)
    file, old, new = MISTAKES[name]
    text = (folder / file).read_text()
    assert old in text, f"{file} has no {old!r} to break"
    (folder / file).write_text(text.replace(old, new, 1))
    steps = [PREPARE, EVALUATE] if name == "cuts" else [PREPARE]  # cuts: checked at use
    for argv in steps[:-1]:
        assert main(argv) == 0
    capsys.readouterr()
    assert main(steps[-1]) == 2
    error = capsys.readouterr().err
    assert error.endswith("hint: run with --debug for the full traceback\n")
    assert error.removesuffix("hint: run with --debug for the full traceback\n") == quoted_error(
        name
    )
