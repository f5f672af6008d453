DROP TABLE webhook_health;
DROP INDEX webhook_deliveries_webhook;
DROP INDEX webhook_deliveries_key;
DROP INDEX webhook_deliveries_due;
DROP TABLE webhook_deliveries;
DROP INDEX webhooks_owner;
DROP TABLE webhooks;
