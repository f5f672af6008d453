-- Widget events v4 gave a widget's definition office_hours, and a replay writes the key (null
-- for a widget made before); the rows written before v4 have no such key. They get it here, so
-- that the read table a replay rebuilds from the log is the table as it is.
UPDATE widgets SET definition = json_set(definition, '$.office_hours', json('null'))
WHERE json_type(definition, '$.office_hours') IS NULL;
