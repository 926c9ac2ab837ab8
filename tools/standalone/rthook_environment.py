"""PyInstaller runtime hook: give the managed process the environment espm was started with.

The one-folder bootloader re-executes itself with LD_LIBRARY_PATH pointing at espm-lib (the
original saved as LD_LIBRARY_PATH_ORIG) and _PYI_* markers. The dynamic loader has read
LD_LIBRARY_PATH at exec, so taking it out of os.environ changes nothing for espm itself; left in,
Elasticsearch and every program it runs would load espm's libssl, libz and libffi instead of
their own, and an espm started from there would take itself for a restarted bootloader.
"""

import os

if "LD_LIBRARY_PATH_ORIG" in os.environ:
    os.environ["LD_LIBRARY_PATH"] = os.environ.pop("LD_LIBRARY_PATH_ORIG")
else:
    os.environ.pop("LD_LIBRARY_PATH", None)
for name in [name for name in os.environ if name.startswith("_PYI_")]:
    del os.environ[name]
