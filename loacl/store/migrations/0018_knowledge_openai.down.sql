DROP INDEX knowledge_documents_remote_file;
ALTER TABLE knowledge_documents DROP COLUMN remote_error;
ALTER TABLE knowledge_documents DROP COLUMN remote_error_code;
ALTER TABLE knowledge_documents DROP COLUMN remote_status;
ALTER TABLE knowledge_documents DROP COLUMN vector_store_id;
ALTER TABLE knowledge_documents DROP COLUMN remote_file_id;
DROP TABLE knowledge_stores;
