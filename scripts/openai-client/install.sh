#!/usr/bin/env bash
# Installs the official OpenAI Python client (pinned) into .venv-openai for tests/openai_client.rs, and makes sure
# curl is present (the same tests drive the server with curl). Prints the venv's python path.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="$ROOT/.venv-openai"
WANT="openai==3.54.0"
if ! "$VENV/bin/python" -c "import openai, sys; sys.exit(openai.__version__ != '3.54.0')" 2>/dev/null; then
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --disable-pip-version-check --no-input -q "$WANT" >&2
fi
if ! command -v curl >/dev/null; then
  echo "installing curl" >&2
  (apt-get update -qq && apt-get install -y -qq curl) >&2
fi
echo "$VENV/bin/python"
