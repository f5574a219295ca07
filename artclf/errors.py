"""The one exception type a stage raises for bad input or a bad environment.

Its message names the file (or value), the cause and, where there is one, the fix; the
CLI prints it on one line and exits 1. Anything else is a bug and keeps its traceback.
"""


class ArtclfError(Exception):
    """Bad input, missing file, unusable configuration: the user can fix it.

    ``permanent``: running the same command again cannot succeed until somebody changes
    something (a flag, the data, the credentials). A launcher fails such a job at once instead
    of retrying it (``artclf/train/outcome.py``); the few errors that time may cure (a store
    still down after the patience, a run folder another job still holds) say ``False``.
    """

    permanent = True
