ALTER TABLE messages DROP COLUMN citations;
DROP TABLE knowledge_vectors;
DROP TRIGGER knowledge_fts_delete;
DROP TRIGGER knowledge_fts_insert;
DROP TABLE knowledge_fts;
DROP TABLE knowledge_chunks;
DROP TABLE knowledge_documents;
