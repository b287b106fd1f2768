"""The permission to add and change http_request nodes of journeys (docs/permissions.md)."""

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("journeys", "0002_session_ended_status_index")]

    operations = [
        migrations.AlterModelOptions(
            name="journey",
            options={
                "permissions": [
                    (
                        "run_http_request_nodes",
                        "Can add and change http_request nodes",
                    )
                ]
            },
        ),
    ]
