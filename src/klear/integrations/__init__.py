"""Plug-ins that bring Klear's losses and rewards into other training frameworks.
Each module imports its framework at the top, so import only the one you use."""
