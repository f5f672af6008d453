-- Knowledge kept in OpenAI vector stores: where each assistant's knowledge is searched, the
-- vector store LOACL keeps for it, and each document's OpenAI file and how OpenAI read it.

CREATE TABLE knowledge_stores (
    assistant_id    TEXT PRIMARY KEY,
    store           TEXT NOT NULL DEFAULT 'local',  -- local | openai
    vector_store_id TEXT,
    name            TEXT,
    updated_at      TEXT NOT NULL
);

-- remote_status: pending (to be sent) | in_progress | completed | failed; NULL while the
-- knowledge is local.
ALTER TABLE knowledge_documents ADD COLUMN remote_file_id TEXT;
ALTER TABLE knowledge_documents ADD COLUMN vector_store_id TEXT;
ALTER TABLE knowledge_documents ADD COLUMN remote_status TEXT;
ALTER TABLE knowledge_documents ADD COLUMN remote_error_code TEXT;
ALTER TABLE knowledge_documents ADD COLUMN remote_error TEXT;
CREATE INDEX knowledge_documents_remote_file ON knowledge_documents (remote_file_id)
    WHERE remote_file_id IS NOT NULL;
