#!/bin/sh
# A fake engine that dies during startup, like vLLM refusing a checkpoint.
echo "INFO loading model"
echo "ValueError: Failed to find a kernel that can implement the NVFP4 linear layer"
exit 1
