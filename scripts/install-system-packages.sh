#!/usr/bin/env bash
# Debian packages the test suite drives for real. Installed only when running as root and missing.
set -euo pipefail

packages=(skopeo podman buildah runc umoci docker.io busybox-static uidmap postgresql iproute2
          docker-registry nginx-light wrk hey curl)
# the tool each package provides, to tell whether it is there
declare -A provides=(
  [skopeo]=skopeo [podman]=podman [buildah]=buildah [runc]=runc [umoci]=umoci
  [docker.io]=dockerd [busybox-static]=busybox [uidmap]=newuidmap [postgresql]=initdb [iproute2]=ip
  [docker-registry]=docker-registry [nginx-light]=nginx [wrk]=wrk [hey]=hey [curl]=curl
)

missing=()
for pkg in "${packages[@]}"; do
  tool=${provides[$pkg]}
  if ! PATH="$PATH:/usr/sbin:/sbin:/usr/lib/postgresql/15/bin" command -v "$tool" >/dev/null 2>&1; then
    missing+=("$pkg")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "not root: cannot install ${missing[*]}; the tests that need them will skip (or fail under CI=true)" >&2
  exit 0
fi
echo "installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# Debian starts services on install; the tests start their own instances
for service in docker containerd postgresql nginx docker-registry; do
  (systemctl stop "$service" || service "$service" stop) >/dev/null 2>&1 || true
done
