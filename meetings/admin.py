from django.contrib import admin

from .models import Meeting, MeetingSession, MeetingTransition


class TransitionInline(admin.TabularInline):
    model = MeetingTransition
    extra = 0
    can_delete = False
    fields = ["created_at", "from_status", "to_status", "source", "reason", "completion_reason",
              "failure_stage", "session", "applied", "metadata"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


class SessionInline(admin.TabularInline):
    model = MeetingSession
    extra = 0
    can_delete = False
    fields = ["session_uid", "started_at", "ended_at", "exit_code"]
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Meeting)
class MeetingAdmin(admin.ModelAdmin):
    list_display = ["id", "user", "platform", "native_meeting_id", "status", "completion_reason",
                    "failure_stage", "stop_requested_at", "deadline_at", "orchestrator", "created_at"]
    list_filter = ["status", "platform", "orchestrator"]
    search_fields = ["native_meeting_id", "user__email", "bot_container_id"]
    date_hierarchy = "created_at"
    list_select_related = ["user"]
    # Status and its companions change only through meetings.lifecycle (and the admin actions).
    readonly_fields = ["status", "completion_reason", "failure_stage", "start_time", "end_time",
                       "stop_requested_at", "deadline_at", "current_session", "bot_container_id",
                       "orchestrator", "post_meeting_enqueued_at", "post_meeting_done_at",
                       "created_at", "updated_at", "user", "platform", "native_meeting_id"]
    inlines = [SessionInline, TransitionInline]


@admin.register(MeetingTransition)
class MeetingTransitionAdmin(admin.ModelAdmin):
    list_display = ["id", "meeting", "from_status", "to_status", "source", "applied", "created_at"]
    list_filter = ["source", "applied", "to_status"]
    search_fields = ["meeting__native_meeting_id", "reason"]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(MeetingSession)
class MeetingSessionAdmin(admin.ModelAdmin):
    list_display = ["id", "meeting", "session_uid", "started_at", "ended_at", "exit_code"]
    search_fields = ["session_uid", "meeting__native_meeting_id"]
    readonly_fields = ["meeting", "session_uid", "started_at"]
