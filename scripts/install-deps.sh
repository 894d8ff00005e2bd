#!/usr/bin/env bash
# Installs what KAT needs on a fresh Debian 12 machine. Idempotent: packages already
# present are left alone, and a second run changes nothing.
#
#   scripts/install-deps.sh            programs a node needs (etcd, Podman, WireGuard, protoc, ...)
#   scripts/install-deps.sh --for-tests  also the sandbox-only Podman settings the test machine needs
#
# Real hosts never need --for-tests: it works around limits of the CI sandbox
# (hybrid cgroups that crun refuses, hard ulimits below Podman's defaults).
set -euo pipefail

for_tests=0
for arg in "$@"; do
  case "$arg" in
    --for-tests) for_tests=1 ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install-deps.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

packages=(
  # build: etcd-client's and kat-proto's build scripts run protoc (libprotobuf-dev: well-known types)
  protobuf-compiler libprotobuf-dev
  # control plane: the embedded etcd member and etcdctl for operators
  etcd-server etcd-client
  # runtime: Podman with runc, conmon and rootless support; a static busybox for local images
  podman runc crun conmon uidmap slirp4netns fuse-overlayfs busybox-static
  # systemd user managers reached over D-Bus
  dbus-user-session
  # overlay: WireGuard tools and the userspace implementation
  wireguard-tools wireguard-go iproute2
  # DNS checks
  dnsutils
  # misc used by scripts and tests
  ca-certificates curl git
)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "install-deps: all packages present"
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "install-deps: cargo not found; install a Rust toolchain (rustup) first" >&2
  exit 1
fi

if [ "$for_tests" -eq 1 ]; then
  # Sandbox-only Podman settings (see ../shared/TESTBED.md): crun refuses hybrid cgroups
  # here and Podman's default ulimits exceed the sandbox's hard limits.
  conf=/etc/containers/containers.conf.d/90-kat-test-sandbox.conf
  want='[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"'
  if [ ! -f "$conf" ] || [ "$(cat "$conf")" != "$want" ]; then
    $SUDO mkdir -p "$(dirname "$conf")"
    printf '%s\n' "$want" | $SUDO tee "$conf" >/dev/null
    echo "install-deps: wrote $conf (test sandbox only)"
  fi
  if ! command -v cargo-nextest >/dev/null 2>&1; then
    echo "install-deps: installing cargo-nextest"
    cargo install --locked cargo-nextest >/dev/null
  fi
fi
echo "install-deps: done"
