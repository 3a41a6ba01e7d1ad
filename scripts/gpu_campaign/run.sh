#!/usr/bin/env bash
# Continue the campaign on a GPU machine from this pack (built by scripts/gpu_campaign/pack.py): install the pack's
# wheels offline, train from its snapshot for a wall-clock budget, and leave the new snapshot (shards of at most
# 16 MiB) and the training log in $OUT/snapshot. Extra arguments go to train_gpu.py (--minutes, train.key=value).
set -euo pipefail
PACK="$(cd "$(dirname "$0")" && pwd)"
: "${OUT:?set OUT to the folder whose files come back}"
SITE="${XDIFFUSION_SITE:-/tmp/xdiffusion-site}"
if compgen -G "$PACK/wheels/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
    --target "$SITE" "$PACK"/wheels/*.whl
fi
export PYTHONPATH="$PACK/src:$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec python3 "$PACK/train_gpu.py" --pack "$PACK" --out "$OUT" "$@"
