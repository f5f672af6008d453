DROP TABLE webhook_health;
DROP TABLE webhook_deliveries;
