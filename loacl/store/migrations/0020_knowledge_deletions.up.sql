-- Files at OpenAI of deleted documents that are still to be deleted there (a read table of the
-- knowledge.* events: a document.deleted with a remote file adds its row, the file's
-- knowledge.remote_deleted removes it). The knowledge worker deletes them, again after a failure
-- (with a growing pause) and at each start, until OpenAI has.
CREATE TABLE knowledge_remote_deletions (
    document_id     TEXT PRIMARY KEY,
    assistant_id    TEXT NOT NULL,
    file_id         TEXT NOT NULL,
    vector_store_id TEXT,
    deleted_seq     INTEGER NOT NULL
);
