#!/bin/sh
# A fake engine that never becomes healthy and has a child process: for lifecycle tests.
sleep 600 &
echo "$! $$" > "${FAKE_ENGINE_PIDS:-/dev/null}"
echo "fake engine: loading weights forever"
wait
