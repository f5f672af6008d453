-- Code before widget events v4 reads a definition without office_hours; a widget given hours
-- keeps them in its events (which that code cannot read: going down past v4 needs no hours set).
UPDATE widgets SET definition = json_remove(definition, '$.office_hours')
WHERE json_type(definition, '$.office_hours') = 'null';
