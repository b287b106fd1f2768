"""Admin for users and the stored integrity runs."""

from django.contrib import admin
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin

from evoflow.models import IntegrityCheckResult, IntegrityRun, User


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    fieldsets = (*(DjangoUserAdmin.fieldsets or ()), ("Phone", {"fields": ("phone", "phone_e164")}))
    readonly_fields = ("phone_e164",)
    list_display = ("username", "email", "phone_e164", "is_staff", "is_active")
    search_fields = ("username", "email", "first_name", "last_name", "phone_e164")


class IntegrityCheckResultInline(admin.TabularInline):
    model = IntegrityCheckResult
    extra = 0
    can_delete = False
    fields = (
        "check_id",
        "status",
        "failing_count",
        "population",
        "ratio",
        "sample_ids",
        "duration_ms",
        "repaired_count",
        "error",
    )
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(IntegrityRun)
class IntegrityRunAdmin(admin.ModelAdmin):
    list_display = ("id", "started_at", "status", "exit_code", "trigger", "fix_requested")
    list_filter = ("status", "trigger")
    inlines = [IntegrityCheckResultInline]
    readonly_fields = [field.name for field in IntegrityRun._meta.fields]
    show_full_result_count = False

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
