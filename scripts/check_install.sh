#!/usr/bin/env bash
# Installs pagewire as the images do (a wheel built from their build context, runtime
# dependencies only, no extras) into a fresh venv and runs it from outside the source tree:
# --version, --help of every subcommand (`pagewire --help` under half a second, so it imports
# nothing a subcommand needs), and `migrate --create-database` against a database that does not
# exist yet. A development install hides what only the dev extra brings and what only the source
# tree holds; this does not.
#
#   scripts/check_install.sh            (PostgreSQL on PAGEWIRE_DATABASE_URL's server, or 127.0.0.1:5432)
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d)"
database="pagewire_install_check_$$"
base_url="${PAGEWIRE_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/pagewire}"
url="${base_url%/*}/$database"

cleanup() {
    if [ -x "$work/venv/bin/python" ]; then
        (cd "$work" && "$work/venv/bin/python" -c "from adapters.database import drop_database; drop_database('$url')") || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Built from the images' build context (what .dockerignore lets through, the rest of the tree
# left out), so this wheel is the one the Dockerfiles install.
echo "install-check: building the wheel from the images' build context" >&2
mkdir "$work/context"
sed -n 's|^!||p' "$repo/.dockerignore" | while read -r path; do
    cp -r "$repo/${path%/}" "$work/context/"
done
find "$work/context" -name '__pycache__' -prune -exec rm -rf {} +
"$python" -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir "$work/dist" "$work/context" >/dev/null
"$python" -m venv "$work/venv"
echo "install-check: installing it without extras into a fresh venv" >&2
"$work/venv/bin/python" -m pip install --quiet --disable-pip-version-check "$work"/dist/pagewire-*.whl

cd "$work"  # outside the tree: nothing may come from the checkout
pagewire="$work/venv/bin/pagewire"
"$pagewire" --version
commands="$("$work/venv/bin/python" - <<'EOF'
from pagewire.cli import build_parser

parser = build_parser()
print(" ".join(parser._subparsers._group_actions[0].choices))  # type: ignore[union-attr]
EOF
)"
slow=()
for command in "" $commands; do
    started=$(date +%s%N)
    if ! "$pagewire" $command --help >/dev/null; then
        echo "install-check: 'pagewire $command --help' failed" >&2
        exit 1
    fi
    elapsed_ms=$(( ($(date +%s%N) - started) / 1000000 ))
    echo "install-check: pagewire $command --help ${elapsed_ms} ms" >&2
    if [ -z "$command" ] && [ "$elapsed_ms" -gt 500 ]; then
        slow+=("pagewire --help took ${elapsed_ms} ms")
    fi
done
if [ "${#slow[@]}" -gt 0 ]; then
    printf 'install-check: %s (at most 500 ms)\n' "${slow[@]}" >&2
    exit 1
fi

PAGEWIRE_DATABASE_URL="$url" "$pagewire" migrate --create-database
echo "install-check: passed (every subcommand's --help, migrate --create-database from an installed wheel)" >&2
