#!/usr/bin/env bash
# Open an HTML report (cavsync eval's report.html, or localize's index.html) in headless Chromium
# and fail unless every image on the page loaded. The page records, once loaded, how many of its
# images decoded (`data-images="N of M loaded"` on <body>); this reads it from the rendered DOM.
#
#   scripts/check_report_in_browser.sh REPORT_DIR [PAGE]      (PAGE defaults to report.html)
#
# Needs Debian's chromium (apt-get install chromium). Not part of CI's hot path.
set -euo pipefail
dir=${1:?usage: $0 REPORT_DIR [PAGE]}
page=${2:-report.html}
path=$(realpath "$dir/$page")
[ -f "$path" ] || { echo "error: $path: no such page" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "error: chromium not found (apt-get install chromium)" >&2; exit 1; }
dom=$("$browser" --headless --no-sandbox --disable-gpu --allow-file-access-from-files \
    --virtual-time-budget=10000 --dump-dom "file://$path" 2>/dev/null)
status=$(grep -o 'data-images="[^"]*"' <<<"$dom" | head -1 | sed 's/data-images="\(.*\)"/\1/')
[ -n "$status" ] || { echo "error: $path: the page never finished loading (no data-images on <body>)" >&2; exit 1; }
loaded=${status%% of *}
rest=${status#* of }
total=${rest%% *}
echo "$path: $status"
if [ "$loaded" != "$total" ] || [ "$total" = 0 ]; then
    echo "error: $path: $loaded of $total images loaded" >&2
    exit 1
fi
