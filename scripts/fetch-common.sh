# Sourced by the fetch scripts (fetch-model.sh, fetch-corpus.sh): the steps
# they share before downloading.
#
#   fetch_begin TOOL FILE
#
# sets `path` to $KVEC_CACHE/FILE (default cache ~/.cache/kvec); when that
# file is already there, prints its path and ends the script (exit 0).
# Otherwise checks that python3 and pip are present and makes `work`, a
# temporary directory inside the cache (on the same file system, so that
# the checked file is moved into place whole), removed when the script ends.
fetch_begin() {
    local tool=$1 file=$2 cache=${KVEC_CACHE:-$HOME/.cache/kvec}
    path=$cache/$file
    if [ -f "$path" ]; then
        echo "$tool: $file found in $cache" >&2
        echo "$path"
        exit 0
    fi
    command -v python3 > /dev/null || { echo "$tool: python3 is needed to fetch $file with pip" >&2; exit 1; }
    python3 -m pip --version > /dev/null 2>&1 || {
        echo "$tool: pip is missing (Debian: apt-get install python3-pip)" >&2; exit 1; }
    command -v sha256sum > /dev/null || { echo "$tool: sha256sum is missing" >&2; exit 1; }
    mkdir -p "$cache"
    work=$(mktemp -d "$cache/fetch.XXXXXX")
    trap 'rm -rf "$work"' EXIT
}
