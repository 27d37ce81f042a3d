"""Date formats of the operations console (settings.FORMAT_MODULE_PATH): Django's English ones
with seconds, since the transitions of one meeting often fall within the same minute."""

DATETIME_FORMAT = "Y-m-d H:i:s T"
SHORTDATETIME_FORMAT = "Y-m-d H:i:s"
TIME_FORMAT = "H:i:s"
DATE_FORMAT = "Y-m-d"
