"""The bundled models' accuracy under DASH and its rivals: ``ACCURACY.md`` and the scripts that write it."""
