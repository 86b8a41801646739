"""The runtime of the challenge container: everything predict.sh needs, nothing more."""

import os

# onnxruntime's Linux wheels collect usage telemetry: a device id and an event store under
# ~/.cache, a session file in /tmp, and uploads where a network is reachable. A medical
# image tool sends nothing anywhere, and the container writes only its masks.
# Set before onnxruntime creates its environment; a user's explicit setting wins.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
