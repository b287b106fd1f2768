"""The database deletes a contact's sessions, and a session's steps, as the models say.

`JourneySession.contact` and `JourneyStep.session` are `on_delete=CASCADE`, which Django only
does in Python: a `DELETE` of a contact by raw SQL (an erasure script, a restore tool) was
refused by the plain foreign keys instead. Both constraints are recreated, under their own names
(so later schema changes still find them) and as deferrable as Django makes them, with
`ON DELETE CASCADE`. tests/journeys/test_contact_delete.py compares the database with the
models. The reverse puts the plain constraints back.
"""

from django.db import migrations

# (table, column, referenced table): each foreign key whose ON DELETE follows the model.
CASCADING = (
    ("journeys_journeysession", "contact_id", "journeys_contact"),
    ("journeys_journeystep", "session_id", "journeys_journeysession"),
)

RECREATE = """
DO $$
DECLARE
    constraint_name text;
BEGIN
    SELECT con.conname INTO STRICT constraint_name
    FROM pg_constraint AS con
    JOIN pg_attribute AS att
      ON att.attrelid = con.conrelid AND att.attnum = con.conkey[1]
    WHERE con.conrelid = '{table}'::regclass AND con.contype = 'f'
      AND cardinality(con.conkey) = 1 AND att.attname = '{column}';
    EXECUTE format(
        'ALTER TABLE {table} DROP CONSTRAINT %I, ADD CONSTRAINT %I FOREIGN KEY ({column})'
        ' REFERENCES {referenced} (id) {on_delete} DEFERRABLE INITIALLY DEFERRED',
        constraint_name, constraint_name
    );
END
$$;
"""


def recreate(on_delete: str) -> list[str]:
    return [
        RECREATE.format(table=table, column=column, referenced=referenced, on_delete=on_delete)
        for table, column, referenced in CASCADING
    ]


class Migration(migrations.Migration):
    dependencies = [("journeys", "0003_journey_http_request_permission")]

    operations = [migrations.RunSQL(recreate("ON DELETE CASCADE"), recreate(""))]
