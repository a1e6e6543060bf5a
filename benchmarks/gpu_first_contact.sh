#!/bin/sh
# A GPU first contact in one command (at most 8 minutes): see python benchmarks/gpu_first_contact.py --help
exec "${PYTHON:-python}" "$(dirname "$0")/gpu_first_contact.py" "$@"
