#!/bin/sh
# Print the path of a Python >= 3.12 (mitmproxy 12 needs it), or explain and fail.
# Order: $PYTHON, python3.13/python3.12/python3 on PATH, then pyenv's installed versions (whose bare
# python3.12 shims refuse to run unless pyenv selects them, so their real binaries are tried instead).
ok() { "$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }
if [ -n "$PYTHON" ]; then
    if ok "$PYTHON"; then echo "$PYTHON"; exit 0; fi
    echo "PYTHON=$PYTHON is not a Python >= 3.12 (mitmproxy 12 needs one)" >&2; exit 1
fi
candidates="python3.13 python3.12 python3"
if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    candidates="$candidates $(ls -d "$root"/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -r)"
fi
for c in $candidates; do
    if ok "$c"; then command -v "$c"; exit 0; fi
done
echo "No Python >= 3.12 found (mitmproxy 12 needs one). Install one (e.g. pyenv install 3.12)" \
     "or run make with PYTHON=/path/to/python3.12" >&2
exit 1
