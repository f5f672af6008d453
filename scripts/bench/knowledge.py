"""Knowledge search and ingestion on a real database.

One assistant with 10,000 passages (100 documents of 100), written through LOACL's own event
store and projections, the FTS5 index's segments then merged as the knowledge worker merges
them once the documents queued are read (so the passages table and its index are what a server
builds), and an embedding for every passage in the embeddings table. Printed:

- search latency, p50 and p99 over many questions, of BM25 alone (``views.knowledge.search_text``,
  what an assistant without an embedding model runs) and of hybrid ranking (BM25, the nearest
  embeddings by sqlite-vec's cosine distance, reciprocal rank fusion, the passages read back:
  what ``Knowledge.search`` does once it has the question's embedding; the provider's round trip
  for that embedding is not counted). Goals: p50 <= 10 ms and <= 30 ms;
- PDF ingestion: pages per second that ``services.extract.extract`` reads and cuts (pypdf).

    python scripts/bench/knowledge.py [--passages 10000] [--dimensions 256] [--pages 200]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from pathlib import Path

from loacl import samples
from loacl.domain.knowledge import DocumentIndexed, DocumentUploaded, Passage, knowledge_stream
from loacl.services.extract import extract
from loacl.services.knowledge import as_vector, fuse
from loacl.store import migrations
from loacl.store.eventstore import EventStore
from loacl.store.projections import default_projections
from loacl.store.projections.knowledge import text_digest
from loacl.store.sqlite import connect
from loacl.store.views import knowledge as views

ASSISTANT = "a-bench"
PER_DOCUMENT = 100
RESULTS = 5
QUERIES = 300
WORDS = [f"{stem}{n}" for stem in ("ship", "refund", "price", "order", "card", "box", "lamp",
                                    "desk", "chair", "cable") for n in range(300)]


def passage_text(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(160))


def vector(rng: random.Random, dimensions: int) -> bytes:
    return as_vector([rng.uniform(-1, 1) for _ in range(dimensions)])


async def build(path: Path, passages: int, dimensions: int) -> None:
    rng = random.Random(7)
    async with EventStore(path, default_projections()) as store:
        for d in range(passages // PER_DOCUMENT):
            doc = f"doc-{d}"
            texts = [passage_text(rng) for _ in range(PER_DOCUMENT)]
            await store.append(knowledge_stream(ASSISTANT), [
                DocumentUploaded(document_id=doc, assistant_id=ASSISTANT, filename=f"{doc}.pdf",
                                 kind="pdf", content_type="application/pdf", size=1,
                                 sha256="0" * 64),
                DocumentIndexed(document_id=doc, pages=PER_DOCUMENT,
                                passages=tuple(Passage(text=t, page=i + 1)
                                               for i, t in enumerate(texts))),
            ])
            await views.keep_vectors(store, "bench", [
                (text_digest(t), vector(rng, dimensions)) for t in texts])
        # As the knowledge worker does once the documents queued are read.
        await views.merge_text_index(store)


def percentiles(samples: list[float]) -> tuple[float, float]:
    ordered = sorted(samples)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


async def search(path: Path, dimensions: int) -> None:
    rng = random.Random(11)
    questions = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(QUERIES)]
    async with EventStore(path, default_projections()) as store:
        index = views.VectorIndex(store)
        bm25: list[float] = []
        hybrid: list[float] = []
        # CPU time of the whole process (the event loop and the store's reader thread): on a
        # shared machine, what the search itself costs, without the waits for a core.
        bm25_cpu: list[float] = []
        hybrid_cpu: list[float] = []
        for question in questions:  # warm both paths once
            await views.search_text(store, ASSISTANT, question, RESULTS * 4)
            await index.nearest(ASSISTANT, "bench", vector(rng, dimensions), RESULTS * 4)
            break
        for question in questions:
            started, cpu = time.perf_counter(), time.process_time()
            await views.search_text(store, ASSISTANT, question, RESULTS)
            bm25.append((time.perf_counter() - started) * 1000)
            bm25_cpu.append((time.process_time() - cpu) * 1000)
            asked = vector(rng, dimensions)
            started, cpu = time.perf_counter(), time.process_time()
            by_text = await views.search_text(store, ASSISTANT, question, RESULTS * 4)
            nearest = await index.nearest(ASSISTANT, "bench", asked, RESULTS * 4)
            order = fuse([h.chunk_id for h in by_text], nearest)[:RESULTS]
            await views.hits(store, order)
            hybrid.append((time.perf_counter() - started) * 1000)
            hybrid_cpu.append((time.process_time() - cpu) * 1000)
        index.close()
    load = Path("/proc/loadavg").read_text().split()[0]  # noqa: ASYNC240
    print(f"  load average while measured: {load}")
    for name, timings, cpu_times, goal in (("BM25 (FTS5) alone", bm25, bm25_cpu, 10),
                                           ("hybrid (RRF)", hybrid, hybrid_cpu, 30)):
        p50, p99 = percentiles(timings)
        print(f"  {name:<18} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms   (goal p50 <= {goal} ms)"
              f"   CPU p50 {percentiles(cpu_times)[0]:6.2f} ms")


def pdf_bytes(pages: int) -> bytes:
    """A PDF of ``pages`` pages, each with 30 lines of text."""
    rng = random.Random(3)
    return samples.pdf([[" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(30)]
                        for _ in range(pages)])


def ingestion(pages: int) -> None:
    data = pdf_bytes(pages)
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        read, found = extract("pdf", data, 1200, 200)
        best = min(best, time.perf_counter() - started)
    print(f"  PDF ingestion: {read} pages ({len(data) // 1024} KiB) into {len(found)} passages "
          f"in {best:.2f} s: {read / best:.0f} pages/s (best of 3)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--passages", type=int, default=10_000)
    parser.add_argument("--dimensions", type=int, default=256)
    parser.add_argument("--pages", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "bench.db"
        conn = connect(path)
        migrations.up(conn)
        conn.close()
        started = time.perf_counter()
        asyncio.run(build(path, args.passages, args.dimensions))
        print(f"knowledge search over {args.passages:,} passages, embeddings of "
              f"{args.dimensions} dimensions (built in {time.perf_counter() - started:.1f} s), "
              f"{QUERIES} questions:")
        asyncio.run(search(path, args.dimensions))
    ingestion(args.pages)


if __name__ == "__main__":
    main()
