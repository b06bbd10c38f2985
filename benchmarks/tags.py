"""Tags that are right (issue 18, lever 5): each tagger's precision and recall against a
hand-labelled sample of every dataset's catalogue.

    python benchmarks/tags.py              # the table and benchmarks/results/tags.json
    python benchmarks/tags.py --sample     # the draw the labels were made on, to label more

The labels (tests/fixtures/tag_labels.json; how they were made is written in it) are 40
items per dataset. Each variant tags the whole catalogue the way a model would tag it;
precision and recall are micro-averaged over the labelled (item, tag) pairs, with a 95%
Wilson interval (40 items make them coarse: read differences of 0.1 and more). Variants:
which domains of the vocabulary are allowed (every one, as until now, or the domains
`detect_domains` finds in the catalogue), what the tagger reads (the item's name, or
`tagging_text`: the name and its catalogue places), and the tagger (the regex lexicon,
the zero-shot tagger on the packaged text encoder at a few thresholds, or both: their
union, or the lexicon's tags the zero-shot scores above a floor confirm).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
from pathlib import Path

import numpy as np

from starsrec.data.interactions import Catalogue
from starsrec.data.loaders import prepare
from starsrec.experiments.report import machine_description, source_revision
from starsrec.features.encoders import named_encoder
from starsrec.features.tags import LexiconTagger, ZeroShotTagger, detect_domains, tagging_texts

RESULTS = Path(__file__).parent / "results"
LABELS = Path(__file__).parents[1] / "tests" / "fixtures" / "tag_labels.json"
DATASETS = ("movielens-100k", "online-retail", "instacart")
THRESHOLDS = (0.3, 0.4, 0.5)
logger = logging.getLogger("tags-benchmark")


def wilson(successes: int, trials: int) -> tuple[float, float]:
    """95% Wilson score interval of a proportion."""
    if trials == 0:
        return (float("nan"), float("nan"))
    z, p = 1.959964, successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * np.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return (float(centre - half), float(centre + half))


def score(predicted: list[set[str]], labelled: list[set[str]]) -> dict:
    """Micro precision and recall over (item, tag) pairs, with Wilson intervals."""
    hits = sum(len(p & t) for p, t in zip(predicted, labelled, strict=True))
    n_predicted = sum(len(p) for p in predicted)
    n_labelled = sum(len(t) for t in labelled)
    precision = hits / n_predicted if n_predicted else float("nan")
    recall = hits / n_labelled if n_labelled else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
    return {
        "precision": precision,
        "precision_ci": wilson(hits, n_predicted),
        "recall": recall,
        "recall_ci": wilson(hits, n_labelled),
        "f1": f1,
        "tags_per_item": n_predicted / max(len(predicted), 1),
        "hits": hits,
        "predicted": n_predicted,
        "labelled": n_labelled,
    }


def as_sets(multi_hot: np.ndarray, vocabulary: tuple[str, ...]) -> list[set[str]]:
    names = np.asarray(vocabulary, dtype=object)
    return [set(names[row > 0]) for row in multi_hot]


def dataset_rows(name: str, labels: dict[str, list[str]], encoder) -> tuple[dict, list[dict]]:
    catalogue = Catalogue.from_items(prepare(name).items)
    rows = catalogue.index_of(list(labels))
    labelled = [set(labels[item]) for item in labels]
    names = catalogue.texts.tolist()
    places = tagging_texts(catalogue)
    read = {"name": names, "name + places": places}
    detected = {what: detect_domains(texts) for what, texts in read.items()}
    info = {"items": catalogue.size, "detected domains": {k: list(v) for k, v in detected.items()}}
    out = []

    def add(variant: str, domains: str, reads: str, sets: list[set[str]]) -> None:
        out.append({"variant": variant, "domains": domains, "reads": reads} | score(sets, labelled))

    for reads, texts in read.items():
        sample = [texts[r] for r in rows]
        every = LexiconTagger()
        add("lexicon", "every", reads, as_sets(every.extract(sample), every.vocabulary))
        lexicon = LexiconTagger(domains=detected[reads])
        lexicon_sets = as_sets(lexicon.extract(sample), lexicon.vocabulary)
        add("lexicon", "detected", reads, lexicon_sets)
        zero_shot = ZeroShotTagger(encoder, domains=detected[reads])
        embeddings = np.asarray(encoder.encode(sample), dtype=np.float32)
        similarity = zero_shot.scores(embeddings)
        vocabulary = zero_shot.vocabulary
        for threshold in THRESHOLDS:
            zero_shot.threshold = threshold
            top = zero_shot.extract_embeddings(embeddings)
            zs_sets = as_sets(top, vocabulary)
            add(f"zero-shot {threshold}", "detected", reads, zs_sets)
            add(
                f"lexicon or zero-shot {threshold}",
                "detected",
                reads,
                [a | b for a, b in zip(lexicon_sets, zs_sets, strict=True)],
            )
            confirmed = [
                {t for t in tags if similarity[i, vocabulary.index(t)] >= threshold - 0.1}
                for i, tags in enumerate(lexicon_sets)
            ]
            add(
                f"lexicon confirmed by zero-shot >= {threshold - 0.1:.1f}",
                "detected",
                reads,
                confirmed,
            )
    return info, out


def sample(seed: int = 20261207, n: int = 40) -> None:
    """Print the draw the labels were made on (item id, text, catalogue places)."""
    rng = np.random.default_rng(seed)
    for name in DATASETS:
        items = prepare(name).items
        print("==", name)
        for i in sorted(rng.choice(len(items), n, replace=False)):
            row = items.iloc[i]
            places = [str(row[c]) for c in ("subclass", "class", "genres") if c in items.columns]
            print(f"{row['item_id']}\t{row['text']}\t[{' / '.join(places)}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sample", action="store_true", help="print the labelled draw")
    parser.add_argument("--out", type=Path, default=RESULTS / "tags.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.sample:
        sample()
        return
    labels = json.loads(LABELS.read_text("utf-8"))["datasets"]
    encoder = named_encoder("all-MiniLM-L6-v2")
    record = {
        "date": dt.date.today().isoformat(),
        "machine": machine_description(),
        "commit": source_revision(),
        "datasets": {},
    }
    print(
        "| dataset | tagger | domains | reads | precision [95%] | recall [95%] | F1 | tags/item |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for name in DATASETS:
        info, rows = dataset_rows(name, labels[name], encoder)
        record["datasets"][name] = info | {"rows": rows}
        for r in rows:
            p, (pl, ph), q, (ql, qh) = (
                r["precision"],
                r["precision_ci"],
                r["recall"],
                r["recall_ci"],
            )
            print(
                f"| {name} | {r['variant']} | {r['domains']} | {r['reads']} | "
                f"{p:.2f} [{pl:.2f}, {ph:.2f}] | {q:.2f} [{ql:.2f}, {qh:.2f}] | "
                f"{r['f1']:.2f} | {r['tags_per_item']:.2f} |"
            )
        print(f"<!-- {name}: {info} -->")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
