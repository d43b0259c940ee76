#!/bin/sh
# The secrets of docker-compose.yml, written once into the `secrets` volume by its one-shot
# `secrets` service, so that a plain `docker-compose up` runs in production with nothing set and no
# secret written in any file of the repository:
#
#   jwt_secret_key     JWT_SECRET_KEY if given (shell or .env), else the one already in the volume,
#                      else 32 random bytes (hex). The api reads it as its JWT_SECRET_KEY setting
#                      (a file named after a setting in /run/secrets; apps/api/config.py).
#   postgres_password  POSTGRES_PASSWORD if given, else the one already in the volume, else random.
#                      PostgreSQL reads it (POSTGRES_PASSWORD_FILE) when it creates its database.
#   database_url       the api's DATABASE_URL, with that password in it.
#
# Usage: init-secrets.sh DIRECTORY. POSIX sh (the alpine image's busybox). It never prints a
# secret. The files belong to the reader that needs them, readable by it only: SECRETS_API_OWNER
# (10001:10001, the image's user) and SECRETS_POSTGRES_OWNER (70:70, postgres in its alpine image).
set -eu

dir=${1:?usage: init-secrets.sh DIRECTORY}
api_owner=${SECRETS_API_OWNER:-10001:10001}
postgres_owner=${SECRETS_POSTGRES_OWNER:-70:70}
user=${POSTGRES_USER:-events}
database=${POSTGRES_DB:-events}
host=${POSTGRES_HOST:-postgres}
umask 077
mkdir -p "$dir"

random_hex() { # 32 random bytes as 64 hex digits (what `openssl rand -hex 32` prints)
    od -An -N32 -tx1 /dev/urandom | tr -d ' \n'
}

urlencode() { # percent-encode everything but RFC 3986's unreserved characters
    rest=$1
    while [ -n "$rest" ]; do
        char=${rest%"${rest#?}"}
        rest=${rest#?}
        case $char in
            [A-Za-z0-9._~-]) printf '%s' "$char" ;;
            *) printf '%%%02X' "'$char" ;;
        esac
    done
}

put() { # put NAME OWNER VALUE: replace DIRECTORY/NAME at once, readable by OWNER only
    printf '%s\n' "$3" >"$dir/.$1.new"
    chown "$2" "$dir/.$1.new"
    chmod 0400 "$dir/.$1.new"
    mv -f "$dir/.$1.new" "$dir/$1"
}

secret() { # secret NAME OWNER GIVEN: the given value, else the one in the volume, else a new one
    if [ -n "$3" ]; then
        put "$1" "$2" "$3"
        echo "secrets: $1 set from the environment"
    elif [ -s "$dir/$1" ]; then
        chown "$2" "$dir/$1"
        echo "secrets: $1 kept"
    else
        put "$1" "$2" "$(random_hex)"
        echo "secrets: $1 generated"
    fi
}

secret jwt_secret_key "$api_owner" "${JWT_SECRET_KEY:-}"
secret postgres_password "$postgres_owner" "${POSTGRES_PASSWORD:-}"
password=$(cat "$dir/postgres_password")
put database_url "$api_owner" "postgresql+asyncpg://$user:$(urlencode "$password")@$host:5432/$database"
echo "secrets: database_url written"
