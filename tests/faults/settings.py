"""A settings module a test rebinds at run time (``settings.SCALE = 10``)."""

SCALE = 1
