"""The two linking flags of docs/invariants.md, with their documented defaults."""

from django.db import migrations

FLAGS = {
    "LINK_USER_BY_PHONE": (
        True,
        "Link deliveries to users at all (guest's user first, then the phone fallback when "
        "its own flag is on). Off: nothing links, every attempt is audited as 'skipped'.",
    ),
    "LINK_USER_BY_PHONE_FALLBACK_TO_USERS": (
        False,
        "When a delivery's guest has no user, link it to the single active user whose E.164 "
        "phone equals the delivery's. Several users, or several active guests of the event "
        "with that phone, give 'ambiguous' and no link.",
    ),
}


def create_flags(apps, schema_editor):
    FeatureFlag = apps.get_model("deliveries", "FeatureFlag")
    for name, (enabled, description) in FLAGS.items():
        # An existing flag keeps the value operators gave it.
        FeatureFlag.objects.get_or_create(
            name=name, defaults={"enabled": enabled, "description": description}
        )


def remove_flags(apps, schema_editor):
    FeatureFlag = apps.get_model("deliveries", "FeatureFlag")
    FeatureFlag.objects.filter(name__in=list(FLAGS)).delete()


class Migration(migrations.Migration):
    dependencies = [("deliveries", "0002_link_functions")]

    operations = [migrations.RunPython(create_flags, remove_flags)]
