"""The admin's date and time formats (settings.FORMAT_MODULE_PATH): one time format everywhere."""
