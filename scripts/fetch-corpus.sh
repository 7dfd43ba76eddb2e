#!/usr/bin/env bash
# Fetches the training corpus of the learned scorers (bench/train_scorer.c,
# docs/LEARNED.md) from PyPI into a cache directory, checks it, and prints
# its path as the last line. A second run finds it in the cache.
#
#   scripts/fetch-corpus.sh
#
# The corpus: the documentation of Docutils 0.21.2 (docs/**/*.txt of its
# source distribution on PyPI, about 1.3 MB of English technical prose in
# reStructuredText), placed in the public domain by its authors (the
# sdist's COPYING.txt). No evaluation of this project uses it: the tasks
# and held texts are bench/texts. Lines that only underline a title
# (=====, -----) are dropped; the files follow in sorted order, a blank line
# between them. KVEC_CACHE sets the cache directory (default ~/.cache/kvec).
set -euo pipefail

file=corpus-docutils-0.21.2.txt
sdist=docutils-0.21.2.tar.gz
sdist_sha=3a6b18732edf182daa3cd12775bbb338cf5691468f91eeeb109deff6ebfa986f
corpus_sha=0a42b654d99def050dfd76d66ae4421e1429d868850733d842e51e06d561601d

. "$(dirname "$0")/fetch-common.sh"
fetch_begin fetch-corpus "$file"   # sets path and work; ends here when cached
echo "fetch-corpus: downloading the source of docutils==0.21.2 from PyPI" >&2
# pip prepares the sdist's metadata (it fetches flit_core for that); only the archive is used
python3 -m pip download --quiet --no-deps --no-binary :all: -d "$work" docutils==0.21.2 >&2 || true
if [ ! -f "$work/$sdist" ]; then
    echo "fetch-corpus: pip could not download docutils==0.21.2: is PyPI reachable from this machine?" >&2
    exit 1
fi
got=$(sha256sum "$work/$sdist" | cut -d' ' -f1)
[ "$got" = "$sdist_sha" ] || { echo "fetch-corpus: $sdist has sha256 $got, expected $sdist_sha" >&2; exit 1; }

python3 - "$work/$sdist" "$work/$file" <<'PY'
import re, sys, tarfile
sdist, out = sys.argv[1:]
underline = re.compile(r"^\s*([=\-~^\"'`#*+.:_])\1{3,}\s*$")
with tarfile.open(sdist) as t, open(out, "w", encoding="utf-8") as f:
    names = sorted(m.name for m in t.getmembers() if m.isfile() and m.name.startswith("docutils-0.21.2/docs/")
                   and m.name.endswith(".txt"))
    for name in names:
        text = t.extractfile(name).read().decode("utf-8")
        f.write("\n".join(line for line in text.splitlines() if not underline.match(line)).strip() + "\n\n")
PY
got=$(sha256sum "$work/$file" | cut -d' ' -f1)
[ "$got" = "$corpus_sha" ] || { echo "fetch-corpus: $file has sha256 $got, expected $corpus_sha" >&2; exit 1; }
mv "$work/$file" "$path"
echo "fetch-corpus: $path ($(wc -c < "$path") bytes)" >&2
echo "$path"
