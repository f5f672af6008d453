-- refuse-if-rows: blobs
DROP TABLE blobs;
DROP TABLE files;
DROP INDEX messages_conversation;
DROP TABLE messages;
