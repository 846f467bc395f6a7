#!/bin/sh
# deploy/compose.yaml: the compose secrets into the environment voxroute reads, then the command
# (the Dockerfile's `voxroute serve ...`). voxroute reads its keys from environment variables only;
# compose secrets are files under /run/secrets.
set -eu

secrets_dir="${VOXROUTE_SECRETS_DIR:-/run/secrets}"  # another folder in tests only

secret() {
    value=""
    if [ -r "$secrets_dir/$1" ]; then
        value="$(cat "$secrets_dir/$1")"  # $(...) drops the trailing newline
    fi
    if [ -z "$value" ]; then
        echo "voxroute-env.sh: the secret $1 is missing or empty (deploy/secrets/$1; docs/deploy.md)" >&2
        exit 2
    fi
    printf '%s' "$value"
}

VOXROUTE_API_KEY="$(secret voxroute_api_key)"
password="$(secret postgres_password)"
case "$password" in
    *[!A-Za-z0-9._~-]*)
        # It goes into a URL unescaped: `openssl rand -hex 32` makes one that fits.
        echo "voxroute-env.sh: postgres_password may hold only letters, digits and . _ ~ -" >&2
        exit 2
        ;;
esac
VOXROUTE_DATABASE_URL="postgresql://voxroute:${password}@postgres:5432/voxroute"
export VOXROUTE_API_KEY VOXROUTE_DATABASE_URL
exec "$@"
