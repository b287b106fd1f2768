"""The "hosts" group (event hosts, docs/permissions.md) and the operator permission to link a
guest to any user. The group's permissions are granted after every `migrate` (by
`evoflow.permissions`), once they exist."""

from django.db import migrations

HOSTS_GROUP = "hosts"


def create_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.get_or_create(name=HOSTS_GROUP)


def remove_group(apps, schema_editor):
    Group = apps.get_model("auth", "Group")
    Group.objects.filter(name=HOSTS_GROUP).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("deliveries", "0004_link_apply_manual"),
        ("auth", "0012_alter_user_first_name_max_length"),
    ]

    operations = [
        migrations.AlterModelOptions(
            name="eventguest",
            options={
                "ordering": ["id"],
                "permissions": [
                    (
                        "link_guest_to_any_user",
                        "Can link a guest to any user",
                    )
                ],
            },
        ),
        migrations.RunPython(create_group, remove_group),
    ]
