#!/bin/sh
# A fake engine process that really serves the OpenAI API (canned answers) on the given --port.
exec "${FAKE_ENGINE_PY:-python3}" "$(dirname "$0")/../fake_openai.py" "$@"
