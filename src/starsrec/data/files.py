"""Every file name an artifact directory holds, in one place.

A trained artifact (`Recommender.save`, `starsrec train`):

    config.json          the model's configuration
    state.safetensors    its weights (booster.txt + context.json for LambdaMART)
    items.parquet        the catalogue it was trained on
    calendar.json        STARS's calendar events
    meta.json            written last: training record and the checksums of the files above

Its serving folder (`starsrec index`), `serving/` inside the artifact:

    serving.json         written last: what was built and the checksums of the files below
    encoder.onnx         the exported user encoder
    memories.safetensors every known user's long-term memory
    events.sqlite        the event store, seeded with the training history
    products.jsonl       products put while serving (`starsrec.serving.product_log`)
    embeddings/          the text embeddings of those products (`starsrec.features.text`'s
                         cache, so a restart does not embed them again)
    index/               the item index: index.json, vectors.safetensors, faiss.index

`serving.shards/` holds the per-shard outputs of `starsrec index --shards N` until merged.
"""

CONFIG_FILE = "config.json"
STATE_FILE = "state.safetensors"
ITEMS_FILE = "items.parquet"
CALENDAR_FILE = "calendar.json"
META_FILE = "meta.json"
BOOSTER_FILE = "booster.txt"
CONTEXT_FILE = "context.json"

SERVING_DIR = "serving"
SERVING_FILE = "serving.json"
ENCODER_FILE = "encoder.onnx"
MEMORY_FILE = "memories.safetensors"
STORE_FILE = "events.sqlite"
PRODUCTS_FILE = "products.jsonl"
EMBEDDINGS_DIR = "embeddings"
SHARDS_DIR = "serving.shards"

INDEX_DIR = "index"
INDEX_META_FILE = "index.json"
VECTORS_FILE = "vectors.safetensors"
FAISS_FILE = "faiss.index"
