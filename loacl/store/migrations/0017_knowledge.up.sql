-- An assistant's knowledge: its documents (a read table of the knowledge.* events), their
-- passages and the full-text index over them, and the passages' embeddings.

CREATE TABLE knowledge_documents (
    document_id      TEXT PRIMARY KEY,
    assistant_id     TEXT    NOT NULL,
    filename         TEXT    NOT NULL,
    kind             TEXT    NOT NULL,
    content_type     TEXT    NOT NULL,
    size             INTEGER NOT NULL,
    sha256           TEXT    NOT NULL,
    status           TEXT    NOT NULL,  -- queued | ready | failed (processing: the service's)
    pages            INTEGER,
    chunks           INTEGER,
    error_code       TEXT,
    error            TEXT,
    created_seq      INTEGER NOT NULL,
    created_at       TEXT    NOT NULL,
    updated_at       TEXT    NOT NULL
);
CREATE INDEX knowledge_documents_assistant ON knowledge_documents (assistant_id, created_seq);

-- One row per passage. ``chunk_id`` is the indexed event's position times 10,000 plus the
-- passage's number in it: the same live and after replay, and the index's rowid.
CREATE TABLE knowledge_chunks (
    chunk_id     INTEGER PRIMARY KEY,
    document_id  TEXT    NOT NULL,
    assistant_id TEXT    NOT NULL,
    ordinal      INTEGER NOT NULL,
    page         INTEGER NOT NULL,
    text         TEXT    NOT NULL,
    text_sha256  TEXT    NOT NULL       -- names the passage's embedding
);
CREATE INDEX knowledge_chunks_document ON knowledge_chunks (document_id);
CREATE INDEX knowledge_chunks_assistant ON knowledge_chunks (assistant_id);

-- BM25 ranking over the passages. Contentless (the chunks table has the text), kept by
-- triggers, so that replay, rebuild and cut fill it as they fill the chunks table.
CREATE VIRTUAL TABLE knowledge_fts USING fts5(
    text, content = '', tokenize = 'unicode61 remove_diacritics 2'
);

CREATE TRIGGER knowledge_fts_insert AFTER INSERT ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (rowid, text) VALUES (new.chunk_id, new.text);
END;

CREATE TRIGGER knowledge_fts_delete AFTER DELETE ON knowledge_chunks BEGIN
    INSERT INTO knowledge_fts (knowledge_fts, rowid, text) VALUES ('delete', old.chunk_id, old.text);
END;

-- A passage's embedding by the model that made it (float32, little-endian: sqlite-vec's
-- vector format). Not a read table: an embedding is the provider's answer, not in the log,
-- so replay keeps this table as it is and the rebuilt passages find theirs by their text's
-- digest. Rows of passages no document holds any more are removed with the document.
-- A rowid table: WITHOUT ROWID keeps the kilobyte-long vectors in the key's b-tree, which made
-- a scan of 10,000 of them ten times slower.
CREATE TABLE knowledge_vectors (
    text_sha256 TEXT NOT NULL,
    model       TEXT NOT NULL,
    embedding   BLOB NOT NULL,
    UNIQUE (text_sha256, model)
);

-- The sources a reply cites (a JSON list of citations, in the order of their numbers).
ALTER TABLE messages ADD COLUMN citations TEXT NOT NULL DEFAULT '[]';
