"""English formats of evoflow: what Django renders by itself (admin fields, inline rows, lists)
uses the same format as `evoflow.admin_display.admin_time`: `2026-12-01 21:00:38 UTC`."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORT_DATETIME_FORMAT = "Y-m-d H:i:s T"
DATE_FORMAT = "Y-m-d"
SHORT_DATE_FORMAT = "Y-m-d"
TIME_FORMAT = "H:i:s"
